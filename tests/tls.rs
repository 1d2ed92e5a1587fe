//! TLS to Postgres and Redis, against the real services: `scripts/services.sh up` serves TLS
//! with a test CA (.local/tls; Postgres `ssl = on` on its port, Redis on a TLS port). The
//! responder, the listener and the admin CLI are given only TLS URLs, so every answer that
//! needs the database or lands in Redis went through verified TLS; a wrong CA, a wrong host
//! name and a client certificate the server does not trust are refused, each with a message
//! naming the failure.

mod common;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{redis_url, run, Pki, Site};

/// The TLS side of the test services.
struct Services {
    /// ca.pem, ca.key, server.pem, server.key.
    dir: PathBuf,
    /// `REDIS_URL` (same DB number) as rediss:// on the TLS port.
    redis_url: String,
}

fn services() -> Services {
    let dir = std::env::var_os("JITOCSP_TEST_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/tls"));
    assert!(dir.join("ca.pem").is_file(), "{}/ca.pem missing: run scripts/services.sh up", dir.display());
    let mut redis = url::Url::parse(&redis_url()).expect("REDIS_URL");
    let tls_port = match std::env::var("JITOCSP_TEST_REDIS_TLS_PORT") {
        Ok(port) => port.parse().expect("JITOCSP_TEST_REDIS_TLS_PORT"),
        Err(_) => redis.port().expect("REDIS_URL has a port") + 1,
    };
    redis.set_scheme("rediss").unwrap();
    redis.set_port(Some(tls_port)).unwrap();
    Services { dir, redis_url: redis.to_string() }
}

impl Services {
    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// The configuration, as environment overrides, that reaches `site`'s database and Redis
    /// over TLS verified against `ca`: its URL with `sslmode=verify-full` (the host, 127.0.0.1,
    /// is in the server certificate), and the Redis TLS port. `channel_binding=require` makes
    /// the login fail unless the connector's tls-server-end-point binding is the server's.
    fn env(&self, site: &Site, ca: &str) -> Vec<(String, String)> {
        let pg = &site.database_url;
        let pg_url =
            format!("{pg}{}sslmode=verify-full&channel_binding=require", if pg.contains('?') { '&' } else { '?' });
        vec![
            ("JITOCSP_DATABASE_URL".into(), pg_url),
            ("JITOCSP_DATABASE_TLS_CA_FILE".into(), ca.into()),
            ("JITOCSP_REDIS_URL".into(), self.redis_url.clone()),
            ("JITOCSP_REDIS_TLS_CA_FILE".into(), ca.into()),
        ]
    }
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = run("openssl", args, dir);
    assert!(output.status.success(), "openssl {args:?}: {}", text(&output));
}

/// A CA of its own in `dir` (`<name>.pem`, `<name>.key`): trusted by nobody.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A client certificate `<name>.pem` and its key `<name>.key` (mode 0600) in `dir`, issued
/// by the CA whose files are `ca_pem` and `ca_key`.
fn make_client(dir: &Path, name: &str, ca_pem: &Path, ca_key: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=jitocsp",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            ca_pem.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-CAserial",
            &format!("{name}.srl"),
            "-days",
            "30",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
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
    let tls = services();
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
    site.drop_database();
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let tls = services();
    let dir = tempfile::tempdir().unwrap();
    let other = make_ca(dir.path(), "other-ca");
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
    let tls = services();
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
    let tls = services();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_client(dir.path(), "client", &tls.dir.join("ca.pem"), &tls.dir.join("ca.key"));
    let other = make_ca(dir.path(), "other-ca");
    let (stranger_cert, stranger_key) = make_client(dir.path(), "stranger", &other, &dir.path().join("other-ca.key"));
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
