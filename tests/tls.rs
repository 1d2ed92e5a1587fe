//! TLS to Postgres and Redis, against the real services: `scripts/services.sh up` serves TLS
//! with a test CA (`JITOCSP_TEST_TLS_DIR` in .local/env; Postgres `ssl = on` on its port,
//! Redis on a TLS port; tests/common/tls.rs). Without them the tests skip, as every test
//! does for a missing service (failing instead under scripts/test.sh). The
//! responder, the listener and the admin CLI are given only TLS URLs, so every answer that
//! needs the database or lands in Redis went through verified TLS; a wrong CA, a wrong host
//! name and a client certificate the server does not trust are refused, each with a message
//! naming the failure. The same for a Redis Cluster whose nodes speak only TLS
//! (`scripts/services.sh cluster-tls-up`, seeds in `JITOCSP_TEST_REDIS_CLUSTER_TLS`).

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{make_ca, output_text as text, pairs, skip_unless, tls_services, Need, Pki, Site, TlsServices, P256};

/// The services these tests talk to, or `None` (after saying why) when the test must skip.
fn services() -> Option<TlsServices> {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::TlsServices]) {
        return None;
    }
    Some(tls_services())
}

/// As [`services`], with the TLS-only Redis Cluster too.
fn cluster_services() -> Option<TlsServices> {
    let needs = [Need::Postgres, Need::Redis, Need::Openssl, Need::TlsServices, Need::RedisClusterTls];
    if skip_unless(&needs) {
        return None;
    }
    Some(tls_services())
}

/// A CA of its own in `dir` (`<name>.pem`, `<name>.key`): trusted by nobody.
fn other_ca(dir: &Path, name: &str) -> PathBuf {
    make_ca(dir, name, name, P256);
    dir.join(format!("{name}.pem"))
}

fn hours_from_now(hours: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::hours(hours)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `jitocsp serve` until it exits on its own (a start-up failure); its output.
fn serve_failure(site: &Site, env: &[(&str, &str)]) -> String {
    let output = site.jitocsp(&["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], env);
    assert!(!output.status.success(), "serve started: {}", text(&output));
    text(&output)
}

#[test]
fn responder_and_admin_cli_work_over_verified_tls() {
    let Some(tls) = services() else { return };
    // Its own database: every connection to it below is this test's responder's.
    let site = Site::with_own_database();
    let env = tls.env(&site, &tls.ca());
    let env = pairs(&env);
    let pki = Pki::new();
    // The admin CLI over TLS: issuer add (and migrate), import, revoke, status.
    let signer = format!("file:{}", pki.file("ca.key").display());
    let issuer = site.add_issuer_with(&pki, &signer, None, &env);
    let mut import = site.command(&["admin", "import", "--issuer", &issuer, "-"]);
    import.envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = import.spawn().unwrap();
    let serials = format!("7101,{0}\n7102,{0}\n", hours_from_now(24 * 30));
    child.stdin.take().unwrap().write_all(serials.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "import over TLS: {}", text(&output));

    // The responder (pools, listener, Redis) has only the TLS URLs.
    let server = site.serve(&env);
    let good = pki.leaf("good", "7101");
    let response = server.post(&pki.request(&good, "-sha256"));
    assert_eq!(response.status, 200);
    let checked = common::openssl_check_response(&pki, &response.body, &good, "-sha256");
    assert!(checked.contains("Response verify OK") && checked.contains(": good"), "{checked}");
    // Redis got the response through rediss:// (the only Redis URL the responder has).
    assert!(!site.redis_entries().is_empty(), "nothing cached through rediss://");
    // Every connection of the responder (pool and listener) to its database is TLS.
    let connections = site.sql(
        "SELECT count(*) || ' ' || bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND a.application_name LIKE 'jitocsp%'",
    );
    let (count, all_tls) = connections.split_once(' ').unwrap();
    assert!(
        count.parse::<u32>().unwrap() >= 2 && all_tls == "true",
        "responder connections (count, all TLS): {connections}"
    );

    // A revocation through the CLI over TLS reaches the responder over the TLS listener.
    let revoked = pki.leaf("revoked", "7102");
    site.jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "7102", "--reason", "keyCompromise"], &env);
    let response = server.post(&pki.request(&revoked, "-sha256"));
    let checked = common::openssl_check_response(&pki, &response.body, &revoked, "-sha256");
    assert!(checked.contains(": revoked"), "{checked}");
    // `admin status` reads the cache over rediss:// too.
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "7101"], &env);
    assert!(status.contains("present") && !status.contains("unreachable"), "{status}");

    // An issuer added while the responder runs is loaded over TLS too: the reload has a
    // connection of its own, made when the TLS listener hears of the change.
    let second = Pki::new();
    let signer = format!("file:{}", second.file("ca.key").display());
    let second_issuer = site.add_issuer_with(&second, &signer, None, &env);
    let leaf = second.leaf("second", "7201");
    site.jitocsp_ok(&["admin", "import", "--issuer", &second_issuer, leaf.to_str().unwrap()], &env);
    server.wait_until(Duration::from_secs(10), |s| {
        let response = s.post(&second.request(&leaf, "-sha256"));
        common::openssl_check_response(&second, &response.body, &leaf, "-sha256").contains(": good")
    });
    assert_eq!(server.metric("jitocsp_issuer_reload_failures_total", &[]), 0.0, "{}", server.log_text());
    site.drop_database();
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let Some(tls) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path(), "other-ca");
    let site = Site::new();
    let env = tls.env(&site, other.to_str().unwrap());
    let env = pairs(&env);

    // Postgres: migrate (the CLI) and serve both stop, naming the verification failure.
    let output = site.jitocsp(&["migrate"], &env);
    assert!(!output.status.success());
    let message = text(&output);
    eprintln!("postgres, wrong CA (migrate): {message}");
    assert!(message.contains("invalid peer certificate") && message.contains("UnknownIssuer"), "{message}");
    let message = serve_failure(&site, &env);
    eprintln!("postgres, wrong CA (serve): {message}");
    assert!(message.contains("connecting to postgres at start-up") && message.contains("UnknownIssuer"), "{message}");

    // Redis: the Postgres side right, the Redis CA wrong.
    let ca = tls.ca();
    let mut env = tls.env(&site, &ca);
    env.retain(|(k, _)| k != "JITOCSP_REDIS_TLS_CA_FILE");
    env.push(("JITOCSP_REDIS_TLS_CA_FILE".into(), other.display().to_string()));
    let env = pairs(&env);
    let pki = Pki::new();
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &env);
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "01"], &env);
    eprintln!("redis, wrong CA (admin status): {status}");
    assert!(status.contains("Redis unreachable") && status.contains("UnknownIssuer"), "{status}");
}

#[test]
fn a_host_name_not_in_the_certificate_is_refused() {
    let Some(tls) = services() else { return };
    let site = Site::new();
    let env = tls.env(&site, &tls.ca());

    // Postgres: the right server at 127.0.0.1, asked for by a name its certificate lacks.
    let parsed: tokio_postgres::Config = site.database_url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(_) = &parsed.get_hosts()[0] else { panic!("DATABASE_URL: no TCP host") };
    let misnamed = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={} user={} password={} dbname={} sslmode=verify-full",
        parsed.get_ports()[0],
        parsed.get_user().unwrap(),
        String::from_utf8_lossy(parsed.get_password().unwrap_or_default()),
        parsed.get_dbname().unwrap(),
    );
    let mut pg_env = env.clone();
    pg_env[0].1 = misnamed;
    let output = site.jitocsp(&["migrate"], &pairs(&pg_env));
    let message = text(&output);
    eprintln!("postgres, wrong host name: {message}");
    assert!(!output.status.success() && message.contains("not valid for name \"db.invalid\""), "{message}");

    // Redis: the TLS port relayed from 127.0.0.2, an address the certificate does not name.
    let target: url::Url = tls.redis_url.parse().unwrap();
    let relay = relay_to(target.port().unwrap());
    let mut misnamed = target.clone();
    misnamed.set_host(Some("127.0.0.2")).unwrap();
    misnamed.set_port(Some(relay)).unwrap();
    let mut redis_env = env.clone();
    redis_env[2].1 = misnamed.to_string();
    let pki = Pki::new();
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &pairs(&env));
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "01"], &pairs(&redis_env));
    eprintln!("redis, wrong host name: {status}");
    assert!(status.contains("Redis unreachable") && status.contains("not valid for name \"127.0.0.2\""), "{status}");
}

#[test]
fn client_certificates_are_shown_and_checked_by_the_servers() {
    let Some(tls) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls.client(dir.path(), "client");
    let other = other_ca(dir.path(), "other-ca");
    let (stranger_cert, stranger_key) =
        common::make_client(dir.path(), "stranger", &other, &dir.path().join("other-ca.key"));
    let site = Site::new();
    let pki = Pki::new();
    // The identity shown to Postgres, and the one shown to Redis.
    let with_identities = |database: (&Path, &Path), redis: (&Path, &Path)| {
        let mut env = tls.env(&site, &tls.ca());
        for (section, (cert, key)) in [("DATABASE", database), ("REDIS", redis)] {
            env.push((format!("JITOCSP_{section}_TLS_CERT_FILE"), cert.display().to_string()));
            env.push((format!("JITOCSP_{section}_TLS_KEY_FILE"), key.display().to_string()));
        }
        env
    };
    let trusted = (cert.as_path(), key.as_path());
    let stranger = (stranger_cert.as_path(), stranger_key.as_path());

    // Issued by the CA the servers trust: both accept it.
    let env = with_identities(trusted, trusted);
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &pairs(&env));
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "01"], &pairs(&env));
    assert!(status.contains("absent") && !status.contains("unreachable"), "{status}");

    // Issued by a CA they do not trust: both refuse it, which shows it was sent.
    let env = with_identities(stranger, trusted);
    let output = site.jitocsp(&["migrate"], &pairs(&env));
    let message = text(&output);
    eprintln!("postgres, untrusted client certificate: {message}");
    assert!(!output.status.success() && message.contains("UnknownCA"), "{message}");
    let env = with_identities(trusted, stranger);
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "01"], &pairs(&env));
    eprintln!("redis, untrusted client certificate: {status}");
    assert!(status.contains("Redis unreachable"), "{status}");

    // A client key others can read is refused before any connection, naming the file.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = site.jitocsp(&["migrate"], &pairs(&with_identities(trusted, trusted)));
    let message = text(&output);
    assert!(
        !output.status.success() && message.contains(&key.display().to_string()) && message.contains("0644"),
        "{message}"
    );
}

#[test]
fn responder_and_admin_cli_use_a_redis_cluster_over_tls() {
    let Some(tls) = cluster_services() else { return };
    // Its own database: the only pending purges `admin revoke` may meet are its own.
    let site = Site::with_own_database();
    let env = tls.cluster_env(&site, &tls.ca(), "rediss");
    let env = pairs(&env);
    let pki = Pki::new();
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &env);
    site.import_serials(&issuer, &["7301", "7302"], &hours_from_now(24 * 30));
    let server = site.serve(&env);
    let lookups = |result: &str| server.metric("jitocsp_cache_lookups_total", &["tier=\"redis\"", result]);

    // A miss: signed, and stored in the cluster (after the answer is sent, so waited for).
    let good = pki.leaf("good", "7301");
    let request = pki.request(&good, "-sha256");
    let signed = server.post(&request);
    let checked = common::openssl_check_response(&pki, &signed.body, &good, "-sha256");
    assert!(checked.contains("Response verify OK") && checked.contains(": good"), "{checked}");
    assert_eq!((lookups("result=\"miss\""), lookups("result=\"hit\"")), (1.0, 0.0));
    let mut stored = BTreeMap::new();
    server.wait_until(Duration::from_secs(10), |_| {
        stored = tls.cluster_entries(&site.key_prefix);
        !stored.is_empty()
    });
    assert_eq!(stored.len(), 1, "{:?}", stored.keys());
    let (key, value) = stored.iter().next().unwrap();
    assert!(contains(value, &signed.body), "{key} in the TLS cluster does not hold the response served");
    // A hit: the very response stored, read back from the cluster.
    let cached = server.post(&request);
    assert_eq!(cached.body, signed.body, "the second answer is not the cached one");
    assert_eq!(lookups("result=\"hit\""), 1.0);
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "7301"], &env);
    assert!(status.contains("present") && !status.contains("unreachable"), "{status}");

    // `admin revoke` deletes the cached "good" from the TLS cluster itself: gone before the
    // responder is asked again, which then answers revoked.
    let revoked = pki.leaf("revoked", "7302");
    let request = pki.request(&revoked, "-sha256");
    let checked = common::openssl_check_response(&pki, &server.post(&request).body, &revoked, "-sha256");
    assert!(checked.contains(": good"), "{checked}");
    let mut added = Vec::new();
    server.wait_until(Duration::from_secs(10), |_| {
        added = tls.cluster_entries(&site.key_prefix).into_keys().filter(|k| !stored.contains_key(k)).collect();
        !added.is_empty()
    });
    let output = site
        .jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "7302", "--reason", "keyCompromise"], &env);
    assert!(output.contains("purged the cached responses of 1 certificate"), "{output}");
    let left = tls.cluster_entries(&site.key_prefix);
    assert!(!left.contains_key(&added[0]) && left.contains_key(key), "after the revocation: {:?}", left.keys());
    assert_eq!(site.sql("SELECT count(*) FROM pending_purges"), "0");
    let checked = common::openssl_check_response(&pki, &server.post(&request).body, &revoked, "-sha256");
    assert!(checked.contains("Response verify OK") && checked.contains(": revoked"), "{checked}");
}

#[test]
fn a_redis_cluster_over_tls_refuses_another_ca_and_plaintext() {
    let Some(tls) = cluster_services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path(), "other-ca");
    let site = Site::new();
    site.jitocsp_ok(&["migrate"], &[]);
    let with_redis = |scheme: &str, ca: Option<&Path>| {
        let mut env = tls.cluster_env(&site, &tls.ca(), scheme);
        env.retain(|(k, _)| k != "JITOCSP_REDIS_TLS_CA_FILE");
        env.extend(ca.map(|ca| ("JITOCSP_REDIS_TLS_CA_FILE".to_owned(), ca.display().to_string())));
        env
    };

    // The nodes' certificates are not from the CA given: serve stops at start-up, and
    // `admin status` reports Redis unreachable, both naming the verification failure.
    let env = with_redis("rediss", Some(&other));
    let message = serve_failure(&site, &pairs(&env));
    eprintln!("redis cluster, wrong CA (serve): {message}");
    assert!(message.contains("invalid peer certificate") && message.contains("UnknownIssuer"), "{message}");
    let pki = Pki::new();
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &[]);
    let status = site.jitocsp_ok(&["admin", "status", "--issuer", &issuer, "--serial", "01"], &pairs(&env));
    eprintln!("redis cluster, wrong CA (admin status): {status}");
    assert!(status.contains("Redis unreachable") && status.contains("UnknownIssuer"), "{status}");

    // Plaintext redis:// seeds: the nodes speak only TLS and hang up, so the responder, which
    // needs the slot map at start-up, does not start.
    let env = with_redis("redis", None);
    let message = serve_failure(&site, &pairs(&env));
    eprintln!("redis cluster, plaintext seeds: {message}");
    assert!(message.lines().any(|l| l.starts_with("error: redis")), "{message}");
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A byte relay from a free port on 127.0.0.2 to `port` on 127.0.0.1; its port. Runs until
/// the test process ends.
fn relay_to(port: u16) -> u16 {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind 127.0.0.2");
    let relay = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { continue };
            for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    relay
}
