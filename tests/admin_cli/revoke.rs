//! `jitocsp admin revoke`, `unrevoke` and `audit`: the inputs, what they refuse, the audit rows.

use super::common::{skip_unless, Need};
use super::fixture::*;
use jitocsp::serial::Serial;

#[tokio::test(flavor = "multi_thread")]
async fn revoke_by_serial_serials_file_and_cert_file() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("revoke").await;
    let files: Vec<String> = ["1a01", "1a02", "1a03", "1a04", "1a05"].iter().map(|s| f.leaf(s)).collect();
    let mut args = vec!["import", "--issuer", f.name.as_str()];
    args.extend(files.iter().map(String::as_str));
    f.admin(&args, None).ok();

    // --serial, colons and upper case.
    let out = f.revoke("1A:01", "keyCompromise").ok();
    assert!(out.stdout.contains("1 revoked, 0 already revoked"), "{}", out.stdout);
    assert_eq!(f.state("1a01").await, Some((Some(1), true, true)));

    // --serials-file: comments, blank lines, one already revoked (skipped, not an error).
    std::fs::write(f.path("serials.txt"), "# to revoke\n1a01\n\n1a:02\n1A03\n").unwrap();
    let out =
        f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "serials.txt", "--reason", "superseded"], None).ok();
    assert!(out.stdout.contains("2 revoked, 1 already revoked"), "{}", out.stdout);
    assert_eq!(f.state("1a01").await, Some((Some(1), true, true)), "kept its first reason");
    assert_eq!(f.state("1a02").await, Some((Some(4), true, true)));
    assert_eq!(f.state("1a03").await, Some((Some(4), true, true)));

    // --cert-file, with --at in the past.
    f.admin(
        &[
            "revoke",
            "--issuer",
            &f.name,
            "--cert-file",
            &files[3],
            "--reason",
            "cessationOfOperation",
            "--at",
            "2024-05-01T10:00:00Z",
        ],
        None,
    )
    .ok();
    let at: chrono::DateTime<chrono::Utc> = db()
        .await
        .query_one(
            "SELECT revoked_at FROM certificates WHERE issuer_id = $1 AND serial = $2",
            &[&f.id, &Serial::from_hex("1a04").unwrap().as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(at.to_rfc3339(), "2024-05-01T10:00:00+00:00");

    // A certificate of another CA in --cert-file: exit 2, named.
    let stranger = Fixture::files("stranger2");
    let foreign = stranger.leaf("1a05");
    std::fs::copy(stranger.path(&foreign), f.path("foreign.pem")).unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--cert-file", "foreign.pem", "--reason", "keyCompromise"], None)
        .fails(2, &["foreign.pem"]);
    assert_eq!(f.state("1a05").await, Some((None, false, false)));

    // One audit row per change: 1 + 2 + 1.
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 4);
    let actor: String = db()
        .await
        .query_one("SELECT actor FROM audit_log WHERE issuer_id = $1 AND action = 'revoke' LIMIT 1", &[&f.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, "admin-cli-test");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_bad_input_change_nothing() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("dryrun").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("2b01,2030-01-01T00:00:00Z\n2b02,2030-01-01T00:00:00Z\n")).ok();
    let out = f
        .admin(&["revoke", "--issuer", &f.name, "--serial", "2b01", "--reason", "keyCompromise", "--dry-run"], None)
        .ok();
    assert!(out.stdout.contains("would revoke 2b01"), "{}", out.stdout);
    assert_eq!(f.state("2b01").await, Some((None, false, false)));

    f.revoke("2b01", "bogusReason").fails(2, &["bogusReason"]);
    f.revoke("2b01", "removeFromCRL").fails(2, &["removeFromCRL"]);
    f.revoke("2b0x", "keyCompromise").fails(2, &["2b0x"]);
    f.admin(
        &[
            "revoke",
            "--issuer",
            &f.name,
            "--serial",
            "2b01",
            "--reason",
            "keyCompromise",
            "--at",
            "2999-01-01T00:00:00Z",
        ],
        None,
    )
    .fails(2, &["future"]);
    f.admin(
        &["revoke", "--issuer", &f.name, "--serial", "2b01", "--reason", "keyCompromise", "--at", "last tuesday"],
        None,
    )
    .fails(2, &["last tuesday"]);
    f.admin(&["revoke", "--issuer", "no-such-issuer", "--serial", "2b01", "--reason", "keyCompromise"], None)
        .fails(2, &["no-such-issuer"]);
    // Exactly one input.
    f.admin(&["revoke", "--issuer", &f.name, "--reason", "keyCompromise"], None).fails(2, &[]);
    f.admin(
        &["revoke", "--issuer", &f.name, "--serial", "2b01", "--serials-file", "x", "--reason", "keyCompromise"],
        None,
    )
    .fails(2, &[]);

    // An unknown serial anywhere in the file: exit 2, named, and no serial of the file revoked.
    std::fs::write(f.path("serials.txt"), "2b01\n2b02\n2bff\n").unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "serials.txt", "--reason", "keyCompromise"], None)
        .fails(2, &["2bff", "serials.txt line 3"]);
    // A syntax error in the file: named by line.
    std::fs::write(f.path("bad.txt"), "2b01\nnot-a-serial\n").unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "bad.txt", "--reason", "keyCompromise"], None)
        .fails(2, &["bad.txt line 2"]);
    assert_eq!(f.state("2b01").await, Some((None, false, false)));
    assert_eq!(f.state("2b02").await, Some((None, false, false)));
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 0);
    assert_eq!(f.count("pending_purge_batches WHERE issuer_id = $1").await, 0);
}

/// Releasing a hold deletes the keys a responder wrote while the certificate was on hold.
#[tokio::test(flavor = "multi_thread")]
async fn unrevoke_only_from_certificate_hold() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("unrevoke").await;
    f.admin(
        &["import", "--issuer", &f.name, "-"],
        Some("5e01,2030-01-01T00:00:00Z\n5e02,2030-01-01T00:00:00Z\n5e03,2030-01-01T00:00:00Z\n"),
    )
    .ok();
    f.revoke("5e01", "certificateHold").ok();
    f.revoke("5e02", "keyCompromise").ok();
    let held = off_runtime(|| f.responder_writes(&["5e01"]));
    let other = off_runtime(|| f.responder_writes(&["5e02"]));

    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e01"], None).ok();
    assert_eq!(f.state("5e01").await, Some((None, false, true)));
    let left = off_runtime(|| f.site.redis_keys());
    assert!(left.is_disjoint(&keys_of(&held)), "keys of the released hold left: {left:?}");
    assert_eq!(left, keys_of(&other));

    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e02"], None).fails(2, &["5e02", "keyCompromise"]);
    assert_eq!(f.state("5e02").await, Some((Some(1), true, true)));
    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e03"], None).fails(2, &["5e03", "not revoked"]);
    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5eff"], None).fails(2, &["5eff"]);

    let row = db()
        .await
        .query_one(
            "SELECT before->>'reason', after->>'status' FROM audit_log WHERE issuer_id = $1 AND action = 'unrevoke'",
            &[&f.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("certificateHold"));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("good"));
    // Revocable again after the hold was released.
    f.revoke("5e01", "superseded").ok();
    assert_eq!(f.state("5e01").await, Some((Some(4), true, true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lists_the_changes() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("audit").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("6f01,2030-01-01T00:00:00Z\n")).ok();
    f.revoke("6f01", "privilegeWithdrawn").ok();
    let out = f.admin(&["audit", "--limit", "1000"], None).ok();
    let mine: Vec<&str> = out.stdout.lines().filter(|l| l.contains(&f.name)).collect();
    assert_eq!(mine.len(), 3, "{}", out.stdout);
    assert!(mine[0].contains("issuer add") && mine[0].contains("admin-cli-test"), "{}", mine[0]);
    assert!(mine[1].contains("import"), "{}", mine[1]);
    assert!(
        mine[2].contains("revoke") && mine[2].contains("serial=6f01") && mine[2].contains("privilegeWithdrawn"),
        "{}",
        mine[2]
    );
    f.admin(&["audit", "--limit", "0"], None).fails(2, &["--limit"]);
}

/// `jitocsp admin revoke --dry-run --serials-file big.txt | head`: the listing stops when its
/// reader goes away, the command ends as it would have (exit 0, no panic), and the dry run
/// still changes nothing; a real revocation whose report is not read is done to the end. (Every
/// admin command writes through `admin::listing`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_whose_reader_goes_away_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("listpipe").await;
    // Far more output than a pipe buffers (64 KiB), so the command is still writing when the
    // reader has gone.
    let serials: Vec<String> = (0..20_000).map(|n| format!("3c{n:06x}")).collect();
    let import: String = serials.iter().map(|s| format!("{s},2030-01-01T00:00:00Z\n")).collect();
    f.admin(&["import", "--issuer", &f.name, "-"], Some(&import)).ok();
    std::fs::write(f.path("all.txt"), serials.join("\n")).unwrap();

    let dry_run =
        ["admin", "revoke", "--issuer", &f.name, "--serials-file", "all.txt", "--reason", "keyCompromise", "--dry-run"];
    let mut command = f.site.command(&dry_run);
    command.current_dir(f.pki.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start jitocsp admin revoke --dry-run");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("would revoke 3c"), "{first}");
    // The reader is dropped here, as `head` exits after its lines.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "a closed pipe is not a failure; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(f.count("certificates WHERE issuer_id = $1 AND reason IS NOT NULL").await, 0, "a dry run");

    // A real revocation whose report nobody reads (`| true`): it is committed, its purges
    // done, and the command ends well, where `println!` panicked after the commit (exit 101).
    std::fs::write(f.path("three.txt"), serials[..3].join("\n")).unwrap();
    let revoke = ["admin", "revoke", "--issuer", &f.name, "--serials-file", "three.txt", "--reason", "keyCompromise"];
    let mut command = f.site.command(&revoke);
    command.current_dir(f.pki.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start jitocsp admin revoke");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(f.count("certificates WHERE issuer_id = $1 AND reason IS NOT NULL").await, 3);
}
