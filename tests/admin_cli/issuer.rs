//! `jitocsp admin issuer add` and `issuer list`, and what they refuse.

use super::common::{make_ca, P256};
use super::common::{skip_unless, Need};
use super::fixture::*;

#[tokio::test(flavor = "multi_thread")]
async fn issuer_add_list_and_refusals() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("issuer").await;
    let list = f.admin(&["issuer", "list"], None).ok();
    assert!(list.stdout.contains(&f.name), "{}", list.stdout);

    // Same name again.
    f.admin(&["issuer", "add", "--name", &f.name, "--cert", "ca.pem", "--signer", "file:ca.key"], None)
        .fails(2, &["already"]);

    // Key mismatch: nothing written.
    let other = unique_name("mismatch");
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca.pem", "--signer", "file:leaf.key"], None)
        .fails(2, &["--signer", "file:leaf.key"]);
    let rows: i64 =
        db().await.query_one("SELECT count(*) FROM issuers WHERE name = $1", &[&other]).await.unwrap().get(0);
    assert_eq!(rows, 0);

    // Not a CA certificate; not a certificate; missing file; bad signer spec.
    let leaf = f.leaf("0a");
    f.admin(&["issuer", "add", "--name", &other, "--cert", &leaf, "--signer", "file:leaf.key"], None)
        .fails(2, &["not a CA certificate"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "leaf.key", "--signer", "file:ca.key"], None)
        .fails(2, &["leaf.key"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "absent.pem", "--signer", "file:ca.key"], None)
        .fails(2, &["absent.pem"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca.pem", "--signer", "file:absent.key"], None)
        .fails(2, &["absent.key"]);

    // A delegated responder: needs id-kp-OCSPSigning, issued by the CA, and its own key.
    let d = f.pki.path();
    make_ca(d, "ca2", &unique_name("ca2"), P256);
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "resp.key"]);
    openssl(d, &["req", "-new", "-key", "resp.key", "-subj", "/CN=responder", "-out", "resp.csr"]);
    std::fs::write(d.join("ocsp.ext"), "extendedKeyUsage=OCSPSigning\n").unwrap();
    for (ca, out, ext) in
        [("ca2", "resp.pem", true), ("ca2", "resp-noeku.pem", false), ("ca", "resp-wrongca.pem", true)]
    {
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "resp.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "0x99",
            "-days",
            "10",
            "-out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if ext {
            args.extend(["-extfile".into(), "ocsp.ext".into()]);
        }
        openssl(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let delegated = unique_name("delegated");
    let add = |resp: &str, signer: &str| {
        f.admin(
            &["issuer", "add", "--name", &delegated, "--cert", "ca2.pem", "--signer", signer, "--responder-cert", resp],
            None,
        )
    };
    add("resp-noeku.pem", "file:resp.key").fails(2, &["OCSPSigning"]);
    add("resp-wrongca.pem", "file:resp.key").fails(2, &["not issued by the CA"]);
    add("resp.pem", "file:ca2.key").fails(2, &["--responder-cert"]);
    add("resp.pem", "file:resp.key").ok();
    let has_responder: bool = db()
        .await
        .query_one("SELECT responder_cert_der IS NOT NULL FROM issuers WHERE name = $1", &[&delegated])
        .await
        .unwrap()
        .get(0);
    assert!(has_responder);
    // The same CA certificate cannot be registered twice.
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca2.pem", "--signer", "file:ca2.key"], None)
        .fails(2, &["already registered"]);

    f.admin(&["import", "--issuer", "no-such-issuer", "-"], Some("01,2030-01-01T00:00:00Z\n"))
        .fails(2, &["no-such-issuer"]);
}

/// `issuer set-signer` and `issuer retire` hold their issuer's row while they open and check
/// the new signer (for a network HSM, a login that can take long). That lock must serialise
/// them against each other only, not hold up the imports and revocations of that issuer,
/// whose foreign keys (certificates; a revocation's audit and purge rows) lock the same row in
/// KEY SHARE mode, as the import here does.
#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_locked_for_a_signer_change_still_takes_imports() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("signer-lock").await;
    let mut holder = f.db().await;
    let change = holder.transaction().await.unwrap();
    let locked = jitocsp::db::issuers::signing_for_update(&change, &f.name).await.unwrap();
    assert!(locked.is_some(), "the issuer is registered");

    let other = f.db().await;
    other.batch_execute("SET lock_timeout = '3s'").await.unwrap();
    let insert =
        "INSERT INTO certificates (issuer_id, serial, not_after) VALUES ($1, '\\x7a01', now() + interval '1 day')";
    let imported = other.execute(insert, &[&f.id]).await;
    assert!(imported.is_ok(), "an import waited for the signer change: {imported:?}");
    change.rollback().await.unwrap();
}
