//! A renewed CA certificate with the same subject and key is, to OCSP, the same issuer: a
//! CertID names its issuer only by the hashes of that subject and key. `admin issuer add`
//! refuses it and says what to do instead; leaves the renewed copy issues are imported into
//! the existing issuer and answered good, verified with the renewed copy as the issuer.

mod common;

use std::path::Path;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let output = run("openssl", args, dir);
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// `openssl ocsp` against `server` for `cert`, with `issuer` both as the CertID's issuer and
/// as the trust anchor; stdout and stderr together.
fn query(dir: &Path, server: &Server, issuer: &str, cert: &str, digest: &str) -> String {
    let output = run(
        "openssl",
        &["ocsp", "-issuer", issuer, digest, "-cert", cert, "-url", &server.url(), "-CAfile", issuer, "-no_nonce"],
        dir,
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// One query on a fresh connection. (Synchronous: the test also starts a server, whose
/// harness runs its own runtime.)
fn query_db(sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Vec<tokio_postgres::Row> {
    block_on(async {
        let client = jitocsp::db::connect(&database_url(), &Default::default()).await.expect("connect to Postgres");
        client.query(sql, params).await.unwrap()
    })
}

#[test]
fn renewed_ca_with_the_same_subject_and_key_is_refused_and_its_leaves_are_answered() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    // The CA is made here rather than by Pki::new so that its subject is known exactly.
    let pki = Pki { dir: tempfile::tempdir().unwrap() };
    let d = pki.path();
    let cn = unique("renewed CA");
    make_ca(d, "ca", &cn, P256);
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"]);
    openssl(d, &["req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr"]);
    let existing = add_issuer(&pki);

    // The renewal: same key, same subject, new validity and serial, so a different certificate.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            &format!("/O=jitocsp tests/CN={cn}"),
            "-days",
            "60",
            "-out",
            "ca-renewed.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
    );
    assert_ne!(std::fs::read(d.join("ca.pem")).unwrap(), std::fs::read(d.join("ca-renewed.pem")).unwrap());
    let hashes =
        jitocsp::x509::certid_hashes(&jitocsp::x509::load_pem_or_der(d.join("ca-renewed.pem")).unwrap()[0]).unwrap();
    let same_certid = || {
        query_db(
            "SELECT name, cert_der FROM issuers WHERE name_hash_sha1 = $1 AND key_hash_sha1 = $2 ORDER BY id",
            &[&&hashes.name_sha1[..], &&hashes.key_sha1[..]],
        )
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
        .collect::<Vec<_>>()
    };
    let before = same_certid();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0, existing);

    // The second registration: exit 2, a message naming the existing issuer and the way to
    // import, nothing written.
    let renewed_name = unique("renewed");
    let signer = format!("file:{}", pki.file("ca.key").display());
    let output = jitocsp(
        &[
            "admin",
            "issuer",
            "add",
            "--name",
            &renewed_name,
            "--cert",
            pki.file("ca-renewed.pem").to_str().unwrap(),
            "--signer",
            &signer,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stdout: {}\nstderr: {stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains(&format!("issuer {existing:?}")), "{stderr}");
    assert!(stderr.contains(&format!("jitocsp admin import --issuer {existing:?}")), "{stderr}");
    assert!(stderr.contains("subject") && stderr.contains("key"), "{stderr}");
    assert_eq!(same_certid(), before, "the issuers with this CertID are unchanged");
    assert!(query_db("SELECT 1 FROM issuers WHERE name = $1", &[&renewed_name]).is_empty());
    let audited =
        query_db("SELECT 1 FROM audit_log WHERE action = 'issuer add' AND after->>'name' = $1", &[&renewed_name]);
    assert!(audited.is_empty());

    // A leaf of each copy, imported into the existing issuer.
    for (ca, leaf, serial) in [("ca.pem", "leaf-old.pem", "0x7a01"), ("ca-renewed.pem", "leaf-renewed.pem", "0x7a02")] {
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                ca,
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "30",
                "-out",
                leaf,
            ],
        );
    }
    jitocsp_ok(
        &[
            "admin",
            "import",
            "--issuer",
            &existing,
            pki.file("leaf-old.pem").to_str().unwrap(),
            pki.file("leaf-renewed.pem").to_str().unwrap(),
        ],
        &[],
    );

    let server = Server::start(&[]);
    for digest in ["-sha1", "-sha256"] {
        for (ca, leaf) in [
            ("ca-renewed.pem", "leaf-renewed.pem"),
            ("ca.pem", "leaf-renewed.pem"),
            ("ca-renewed.pem", "leaf-old.pem"),
            ("ca.pem", "leaf-old.pem"),
        ] {
            let text = query(d, &server, ca, leaf, digest);
            assert!(text.contains("Response verify OK"), "{ca} {leaf} {digest}: {text}");
            assert!(text.contains(&format!("{leaf}: good")), "{ca} {leaf} {digest}: {text}");
        }
    }
}
