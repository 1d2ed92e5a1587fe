//! Postgres failover: the primary dies, its streaming standby is promoted, and a responder
//! whose `database.url` names both hosts (`target_session_attrs=read-write`) carries on with
//! the new primary: misses are read there, the change feed reconnects to it and hears a
//! revocation committed there, without a restart or a configuration change.
//!
//! The test promotes the shared test standby (127.0.0.1:54330, made by `scripts/services.sh
//! standby-up`) and has the script make it anew afterwards, so it lives in a test binary of
//! its own (cargo runs test binaries one after another). The primary "dies" only for the
//! responder and the admin CLI of this test: they reach it through a proxy that closes every
//! connection, as a dead host would, while the other tests keep using it.

mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::*;
use proxy::Proxy;

/// host:port of a postgres:// URL.
fn authority(url: &str) -> String {
    let after_at = url.split_once('@').map_or(url, |(_, rest)| rest);
    after_at.split(['/', '?']).next().unwrap_or_default().to_owned()
}

fn status(pki: &Pki, server: &Server, cert: &std::path::Path) -> String {
    let text = openssl_ocsp_query(pki, server, cert, "-sha1");
    if !text.contains("Response verify OK") {
        return text;
    }
    let line = format!("{}: ", cert.display());
    text.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or_default().trim().to_owned()
}

#[test]
fn a_promoted_standby_takes_over_with_no_restart() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Standby]) {
        return;
    }
    let site = Site::with_own_database();
    let database = site.database_url.rsplit_once('/').map(|(_, db)| db.to_owned()).unwrap();
    let standby_url = std::env::var("JITOCSP_TEST_STANDBY_URL").unwrap();
    let pki = Pki::new();
    let issuer = site.add_issuer(&pki);
    let [kept, revoked, added] = ["kept", "revoked", "added"].map(|name| pki.leaf(name, &format!("f0{}", name.len())));
    for cert in [&kept, &revoked] {
        site.jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap()], &[]);
    }
    // The standby has replayed this test's database and rows before the primary dies.
    let on_standby = with_database(&standby_url, &database);
    let replayed = Instant::now();
    while site_sql(&on_standby, "SELECT count(*) FROM certificates").as_deref() != Some("2") {
        assert!(replayed.elapsed() < Duration::from_secs(30), "the standby did not replay the test's rows");
        std::thread::sleep(Duration::from_millis(200));
    }

    let primary = Proxy::start(authority(&site.database_url).parse().unwrap(), "jitocsp");
    let both = format!(
        "postgres://jitocsp:jitocsp@127.0.0.1:{},{}/{database}?target_session_attrs=read-write",
        primary.port,
        authority(&standby_url)
    );
    let env = [("DATABASE_URL", both.as_str())];
    let server = site.serve(&env);
    assert_eq!(status(&pki, &server, &kept), "good");
    assert_eq!(status(&pki, &server, &revoked), "good");

    let _restore = Restore(&["standby-up"]);
    primary.down(true);
    assert_eq!(site_sql(&on_standby, "SELECT pg_promote()").as_deref(), Some("t"), "promoting the standby");
    // The admin CLI, given both hosts too, writes to the new primary.
    site.jitocsp_ok(
        &[
            "admin",
            "revoke",
            "--issuer",
            &issuer,
            "--cert-file",
            revoked.to_str().unwrap(),
            "--reason",
            "keyCompromise",
        ],
        &env,
    );
    site.jitocsp_ok(&["admin", "import", "--issuer", &issuer, added.to_str().unwrap()], &env);

    let promoted = Instant::now();
    loop {
        let seen = [status(&pki, &server, &kept), status(&pki, &server, &revoked), status(&pki, &server, &added)];
        let feed = server.metrics_text().contains("jitocsp_listener_connected 1");
        if feed && seen[0] == "good" && seen[1].starts_with("revoked") && seen[2] == "good" {
            break;
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "30 s after the failover: kept {:?}, revoked {:?}, added {:?}, feed live {feed}; log:\n{}",
            seen[0],
            seen[1],
            seen[2],
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(server.metric("jitocsp_listener_reconnects_total", &[]) >= 1.0, "the feed moved to the new primary");
}

/// One value from `url` by psql, or None if it cannot be read (yet).
fn site_sql(url: &str, query: &str) -> Option<String> {
    let output = std::process::Command::new("psql").args(["-X", url, "-tAc", query]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
