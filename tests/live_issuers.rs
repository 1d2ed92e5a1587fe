//! Issuers change while responders run: added, given a new signer, broken on the responders'
//! host, retired. Every running responder follows within seconds and without a restart
//! (sql/0005 notifies each change; the listener has the issuers reloaded), and a change that
//! breaks one issuer leaves the others served.

mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proxy::Proxy;

/// How long a change may take to reach every running responder.
const WITHIN: Duration = Duration::from_secs(5);

/// Asks `server` about `cert` with `openssl ocsp` until the answer satisfies `done`, for at
/// most [`WITHIN`] after `since` (when the change was committed); returns the answer.
fn eventually(pki: &Pki, server: &Server, cert: &Path, since: Instant, done: impl Fn(&str) -> bool) -> String {
    until(server, since, || {
        let text = openssl_ocsp_query(pki, server, cert, "-sha1");
        let satisfied = done(&text);
        (text, satisfied)
    })
}

/// Makes `attempt` (an answer from `server` and whether it is the one awaited) until it
/// succeeds, for at most [`WITHIN`] after `since`; returns the answer.
fn until(server: &Server, since: Instant, mut attempt: impl FnMut() -> (String, bool)) -> String {
    loop {
        let (text, satisfied) = attempt();
        if satisfied {
            return text;
        }
        assert!(
            since.elapsed() < WITHIN,
            "not seen by the responder on port {} within {WITHIN:?}; last answer:\n{text}\nlog:\n{}",
            server.port,
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn good(cert: &Path) -> impl Fn(&str) -> bool + '_ {
    move |text| text.contains("Response verify OK") && text.contains(&format!("{}: good", cert.display()))
}

fn import(site: &Site, issuer: &str, cert: &Path) {
    site.jitocsp_ok(&["admin", "import", "--issuer", issuer, cert.to_str().unwrap()], &[]);
}

#[test]
fn issuer_changes_reach_every_running_responder_within_seconds() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let site = Site::with_own_database();
    let steady = Pki::new();
    let steady_name = site.add_issuer(&steady);
    let steady_leaf = steady.leaf("steady", "5a01");
    import(&site, &steady_name, &steady_leaf);
    let servers = [site.serve(&[]), site.serve(&[])];
    let steady_is_served = |what: &str| {
        for server in &servers {
            let text = openssl_ocsp_query(&steady, server, &steady_leaf, "-sha1");
            assert!(good(&steady_leaf)(&text), "{what}: the other issuer is no longer served: {text}");
        }
    };

    // Added while they run: unknown before, answered good after.
    let pki = Pki::new();
    let leaf = pki.leaf("leaf", "5e01");
    for server in &servers {
        let text = openssl_ocsp_query(&pki, server, &leaf, "-sha1");
        assert!(text.contains("Responder Error: unauthorized (6)"), "before the add: {text}");
    }
    let name = site.add_issuer(&pki);
    import(&site, &name, &leaf);
    let added = Instant::now();
    for server in &servers {
        eventually(&pki, server, &leaf, added, good(&leaf));
    }

    // A new signer: a delegated responder. A certificate not cached yet is answered with the
    // responder's certificate included, signed by its key.
    let (responder_key, responder_cert) = delegated_responder(&pki, P256);
    let signer = format!("file:{}", responder_key.display());
    let set = ["admin", "issuer", "set-signer", "--name", &name, "--signer", &signer];
    let output = site.jitocsp_ok(&[&set[..], &["--responder-cert", responder_cert.to_str().unwrap()]].concat(), &[]);
    assert!(output.contains("running responders switch within seconds"), "{output}");
    let changed = Instant::now();
    for (i, server) in servers.iter().enumerate() {
        // A certificate asked before this responder has reopened the issuer is rightly signed
        // by the old signer (still valid) and then served from cache, so each try asks about a
        // certificate never asked before.
        let mut tries = 0;
        until(server, changed, || {
            let leaf = pki.leaf(&format!("delegated{i}-{tries}"), &format!("5e1{i}{tries:04x}"));
            tries += 1;
            import(&site, &name, &leaf);
            let text = openssl_ocsp_query(&pki, server, &leaf, "-sha1");
            let signed_by_new = good(&leaf)(&text) && text.contains("jitocsp test responder");
            (text, signed_by_new)
        });
    }
    steady_is_served("after set-signer");

    // A signer the responders' host cannot open (the row changed by hand, as a host without
    // the HSM would see it): that issuer's misses get tryLater, /readyz names it, the other
    // issuer is still served.
    site.sql(&format!(
        "UPDATE issuers SET signer = 'file:/nonexistent/jitocsp.key', changed_at = now() WHERE name = '{name}'"
    ));
    let broken = Instant::now();
    for (i, server) in servers.iter().enumerate() {
        // As above: a certificate asked before this responder has reopened the issuer is
        // rightly signed by the old signer and then served from cache, so each try asks about
        // a new one.
        let mut tries = 0;
        until(server, broken, || {
            let leaf = pki.leaf(&format!("unsigned{i}-{tries}"), &format!("5e2{i}{tries:04x}"));
            tries += 1;
            import(&site, &name, &leaf);
            let text = openssl_ocsp_query(&pki, server, &leaf, "-sha1");
            let refused = text.contains("Responder Error: trylater (3)");
            (text, refused)
        });
        let (status, body) = metrics_endpoint(server, "/readyz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(&format!("issuer {name}")), "{body}");
    }
    steady_is_served("with one issuer's signer broken");

    // Retired: its certificates, cached or not, are answered unauthorized everywhere.
    let output = site.jitocsp_ok(&["admin", "issuer", "retire", "--name", &name], &[]);
    assert!(output.contains("retired issuer"), "{output}");
    let retired = Instant::now();
    for server in &servers {
        eventually(&pki, server, &leaf, retired, |text| text.contains("Responder Error: unauthorized (6)"));
        let (status, body) = metrics_endpoint(server, "/readyz");
        assert_eq!(status, 200, "the retired issuer's broken signer no longer matters: {body}");
    }
    steady_is_served("after the retirement");
    let listed = site.jitocsp_ok(&["admin", "issuer", "list"], &[]);
    assert!(listed.lines().any(|l| l.contains(&name) && l.contains("retired=")), "{listed}");

    // Both changes made through the CLI are audited, with what they replaced.
    let audited = site.sql(&format!(
        "SELECT string_agg(action || ' ' || coalesce(before->>'signer', '-'), ',' ORDER BY chain_seq) \
         FROM audit_log WHERE issuer_id = {} AND action LIKE 'issuer %'",
        site.issuer_id(&name)
    ));
    let ca_signer = format!("file:{}", pki.file("ca.key").display());
    assert_eq!(
        audited,
        format!("issuer add -,issuer set-signer {ca_signer},issuer retire file:/nonexistent/jitocsp.key")
    );
    site.jitocsp_ok(&["admin", "audit", "--verify"], &[]);
}

#[test]
fn set_signer_and_retire_refuse_bad_input_and_change_nothing() {
    if skip_unless(&[Need::Postgres, Need::Openssl]) {
        return;
    }
    let site = Site::with_own_database();
    let pki = Pki::new();
    let name = site.add_issuer(&pki);
    let before = site.sql("SELECT signer || ' ' || changed_at FROM issuers");
    let other = Pki::new();
    let wrong_key = format!("file:{}", other.file("ca.key").display());
    let (_, foreign_responder) = delegated_responder(&other, P256);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["set-signer", "--name", "nope", "--signer", "file:x"], "unknown issuer \"nope\""),
        (vec!["set-signer", "--name", &name, "--signer", &wrong_key], "not the key of"),
        (
            vec![
                "set-signer",
                "--name",
                &name,
                "--signer",
                &wrong_key,
                "--responder-cert",
                foreign_responder.to_str().unwrap(),
            ],
            "not issued by the CA",
        ),
        (vec!["retire", "--name", "nope"], "unknown issuer \"nope\""),
    ];
    for (args, expected) in cases {
        let output = site.jitocsp(&[&["admin", "issuer"][..], &args].concat(), &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(site.sql("SELECT signer || ' ' || changed_at FROM issuers"), before, "nothing changed");
    let audited = site.sql("SELECT count(*) FROM audit_log WHERE action IN ('issuer set-signer', 'issuer retire')");
    assert_eq!(audited, "0");
}

#[test]
fn an_issuer_added_while_the_feed_is_down_is_served_once_it_is_back() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let site = Site::with_own_database();
    let (proxy, proxied) = Proxy::for_listener(&site.database_url);
    let server = site.serve(&[("DATABASE_URL", &proxied)]);
    assert_eq!(proxy.marked_connections(), 1, "the listener's connection goes through the proxy");

    // The notification of the add is sent into a connection that silently passes nothing,
    // and is lost with it.
    proxy.blackhole(true);
    let pki = Pki::new();
    let name = site.add_issuer(&pki);
    let leaf = pki.leaf("leaf", "5f01");
    import(&site, &name, &leaf);
    server.wait_until(Duration::from_secs(30), |s| s.metric("jitocsp_listener_reconnects_total", &[]) >= 1.0);
    let text = openssl_ocsp_query(&pki, &server, &leaf, "-sha1");
    assert!(text.contains("Responder Error: unauthorized (6)"), "not heard of yet: {text}");

    // Reconnected, the listener has the issuers reloaded: the add is caught up with.
    proxy.blackhole(false);
    server.wait_until(Duration::from_secs(30), |s| s.metrics_text().contains("jitocsp_listener_connected 1"));
    assert!(proxy.marked_connections() >= 2, "the listener reconnected");
    eventually(&pki, &server, &leaf, Instant::now(), good(&leaf));
}
