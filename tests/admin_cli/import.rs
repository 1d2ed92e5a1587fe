//! `jitocsp admin import`: certificate files, stdin, idempotence, a bulk import.

use std::time::Instant;

use super::common::{skip_unless, Need};
use super::fixture::*;

#[tokio::test(flavor = "multi_thread")]
async fn import_files_and_stdin_idempotently() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("import").await;
    let a = f.leaf("0100");
    let b = f.leaf("00ff02"); // top bit set: stored with a sign byte
    let c = f.leaf("0103");
    let mut bundle = std::fs::read(f.path(&b)).unwrap();
    bundle.extend(std::fs::read(f.path(&c)).unwrap());
    std::fs::write(f.path("bundle.pem"), bundle).unwrap();
    openssl(f.pki.path(), &["x509", "-in", &a, "-outform", "DER", "-out", "a.der"]);

    let out = f.admin(&["import", "--issuer", &f.name, "a.der", "bundle.pem"], None).ok();
    assert!(out.stdout.contains("3 inserted"), "{}", out.stdout);
    let out = f.admin(&["import", "--issuer", &f.name, &a, "bundle.pem"], None).ok();
    assert!(out.stdout.contains("0 inserted, 3 already present"), "{}", out.stdout);
    assert_eq!(f.state("ff02").await, Some((None, false, false)));

    let stdin =
        "# serial,notAfter\n0A:0B,2030-01-01T00:00:00Z\n\n0c0d,2030-06-01T12:00:00+02:00\n0100,2030-01-01T00:00:00Z\n";
    let out = f.admin(&["import", "--issuer", &f.name, "-"], Some(stdin)).ok();
    assert!(out.stdout.contains("2 inserted, 1 already present"), "{}", out.stdout);
    assert!(out.stderr.contains("different notAfter"), "{}", out.stderr);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 5);

    // Any bad input: exit 2, named, nothing written.
    f.admin(
        &["import", "--issuer", &f.name, "-"],
        Some("0e,2030-01-01T00:00:00Z\n0f,2030-01-01T00:00:00Z\nzz,2030-01-01T00:00:00Z\n"),
    )
    .fails(2, &["stdin line 3", "zz"]);
    f.admin(&["import", "--issuer", &f.name, "-"], Some("0e,2030-01-01T00:00:00Z\n0f,next year\n"))
        .fails(2, &["stdin line 2", "next year"]);
    let stranger = Fixture::files("stranger");
    let foreign = stranger.leaf("0e");
    std::fs::copy(stranger.path(&foreign), f.path("foreign.pem")).unwrap();
    let d = f.leaf("0d");
    f.admin(&["import", "--issuer", &f.name, &d, "foreign.pem"], None)
        .fails(2, &["foreign.pem", "not issued by issuer"]);
    f.admin(&["import", "--issuer", &f.name, &d, "leaf.key"], None).fails(2, &["leaf.key"]);
    f.admin(&["import", "--issuer", &f.name, &d, "missing.pem"], None).fails(2, &["missing.pem"]);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 5);
    assert_eq!(f.state("0d").await, None);
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'import'").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn import_100k_rows_from_stdin() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("bulk").await;
    let mut input = String::with_capacity(100_000 * 40);
    for i in 0..100_000u64 {
        input.push_str(&format!("{:016x},2031-01-01T00:00:00Z\n", 0x5000_0000_0000_0000u64 + i));
    }
    let started = Instant::now();
    let out = f.admin(&["import", "--issuer", &f.name, "-"], Some(&input)).ok();
    println!("100k-row stdin import took {:?}: {}", started.elapsed(), out.stdout.trim());
    assert!(out.stdout.contains("100000 inserted"), "{}", out.stdout);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 100_000);
}
