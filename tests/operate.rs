//! Operating jitocsp: metrics that move with traffic, a TLS server stapling its responses,
//! least-privilege Postgres roles, the CDN purge hook, and the deploy files' own checks.
//! Real binary, real Postgres and Redis, real nginx and openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn psql(url: &str, query: &str) -> (bool, String) {
    let output = Command::new("psql").args(["-X", "-v", "ON_ERROR_STOP=1", url, "-tAc", query]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text.trim().to_owned())
}

/// `DATABASE_URL` with another user and password.
fn url_as(user: &str, password: &str) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Every series of `name` (full series name, e.g. `..._count`) summed, with `labels`.
fn delta(before: f64, server: &Server, name: &str, labels: &[&str]) -> f64 {
    server.metric(name, labels) - before
}

#[test]
fn metrics_move_with_traffic() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("m1", "7101");
    let crowd = pki.leaf("m2", "7102");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap(), crowd.to_str().unwrap()], &[]);
    // JSON log lines, to count this issuer's status notifications. A Redis GET slower than the
    // 100 ms default on a saturated machine would be answered by signing (right, but not the
    // path counted here).
    let server = Server::start(&[("JITOCSP_LOG_FORMAT", "json"), ("JITOCSP_REDIS_TIMEOUT_MS", "5000")]);
    let text = server.metrics_text();
    assert!(text.contains("jitocsp_build_info{version=\""), "{text}");
    assert!(text.contains("jitocsp_signer_in_flight 0"), "{text}");
    assert!(text.contains("jitocsp_signer_waiting 0"), "{text}");
    assert!(text.contains("jitocsp_signer_max_in_flight 64"), "{text}");

    let request = pki.request(&cert, "-sha1");
    let path = format!("/{}", b64(&request));
    let get_ok = ["method=\"GET\"", "outcome=\"successful\""];
    let (g0, p0, h0) = (
        server.metric("jitocsp_requests_total", &get_ok),
        server.metric("jitocsp_requests_total", &["method=\"POST\"", "outcome=\"successful\""]),
        server.metric("jitocsp_requests_total", &["method=\"HEAD\""]),
    );
    for _ in 0..5 {
        assert_eq!(server.get(&path, &[]).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(server.post(&request).status, 200);
    }
    block_on(http(server.port, "HEAD", &path, &[], &[])).unwrap();
    for _ in 0..2 {
        server.get("/not-base64!", &[]);
    }
    assert_eq!(delta(g0, &server, "jitocsp_requests_total", &get_ok), 5.0);
    assert_eq!(delta(p0, &server, "jitocsp_requests_total", &["method=\"POST\"", "outcome=\"successful\""]), 3.0);
    assert_eq!(delta(h0, &server, "jitocsp_requests_total", &["method=\"HEAD\""]), 1.0);
    assert_eq!(server.metric("jitocsp_requests_total", &["method=\"GET\"", "outcome=\"malformedRequest\""]), 2.0);
    assert_eq!(server.metric("jitocsp_request_duration_seconds_count", &["method=\"GET\""]), 7.0);

    // One miss, one signature (with issuer and signer), the rest from Redis.
    let issuer_label = format!("issuer=\"{issuer}\"");
    // The signer label is the signer's description, which names its key file (or PKCS#11 URI).
    let signer_label = format!("file:{}\"", pki.file("ca.key").display());
    assert_eq!(server.metric("jitocsp_signatures_total", &[&issuer_label, "signer=\"", &signer_label]), 1.0);
    assert_eq!(server.metric("jitocsp_signature_duration_seconds_count", &[&issuer_label]), 1.0);
    assert_eq!(server.metric("jitocsp_cache_lookups_total", &["tier=\"redis\"", "result=\"miss\""]), 1.0);
    assert_eq!(server.metric("jitocsp_cache_lookups_total", &["tier=\"redis\"", "result=\"hit\""]), 8.0);
    assert_eq!(server.metric("jitocsp_db_reads_total", &[]), 1.0);
    assert_eq!(server.metric("jitocsp_db_read_duration_seconds_count", &[]), 1.0);
    assert_eq!(server.metric("jitocsp_redis_duration_seconds_count", &["op=\"get\""]), 9.0);
    assert_eq!(server.metric("jitocsp_redis_duration_seconds_count", &["op=\"set\""]), 1.0);
    assert_eq!(server.metric("jitocsp_response_age_seconds_count", &[]), 9.0);

    // Histograms, not summaries.
    let text = server.metrics_text();
    for name in [
        "jitocsp_request_duration_seconds_bucket{",
        "jitocsp_signature_duration_seconds_bucket{",
        "jitocsp_redis_duration_seconds_bucket{",
        "jitocsp_db_read_duration_seconds_bucket{",
        "jitocsp_response_age_seconds_bucket{",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(!text.contains("quantile="), "summaries instead of histograms:\n{text}");

    // A crowd asking for one uncached certificate: one signature; every other request is
    // served by one of the other paths: it joined the flight, found the result in Redis, or
    // found it among the responses this instance signed seconds ago (or in the local tier,
    // which is off here).
    let served = |s: &Server| {
        s.metric("jitocsp_single_flight_joins_total", &[])
            + s.metric("jitocsp_cache_lookups_total", &["result=\"hit\""])
            + s.metric("jitocsp_cache_lookups_total", &["result=\"verified\""])
    };
    let served0 = served(&server);
    let crowd_request = pki.request(&crowd, "-sha1");
    let port = server.port;
    block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let body = crowd_request.clone();
                tokio::spawn(async move {
                    http(port, "POST", "/", &[("Content-Type", "application/ocsp-request")], &body).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().status, 200);
        }
    });
    assert_eq!(server.metric("jitocsp_signatures_total", &[&issuer_label]), 2.0);
    assert_eq!(server.metric("jitocsp_signatures_total", &[]), 2.0, "no other issuer signed here");
    assert_eq!(served(&server) - served0, 19.0, "{}", server.metrics_text());

    // A revocation is heard: this issuer's notifications, counted from the server's log (other
    // tests revoke on the same channel at the same time).
    let issuer_id = site().issuer_id(&issuer);
    let heard = |s: &Server| {
        s.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["fields"]["message"] == "status change" && line["fields"]["issuer_id"] == issuer_id)
            .map(|line| line["fields"]["serial"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(heard(&server), Vec::<String>::new());
    jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "7101", "--reason", "superseded"], &[]);
    server.wait_until(Duration::from_secs(5), |s| !heard(s).is_empty());
    assert_eq!(heard(&server), vec!["7101".to_owned()]);
    assert!(server.metric("jitocsp_status_notifications_total", &[]) >= 1.0);
}

/// Request log lines are sampled by `log.request_sample`, and JSON on request.
#[test]
fn request_log_is_sampled_and_json_on_request() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("l1", "7201");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap()], &[]);
    let request = pki.request(&cert, "-sha1");

    let all = Server::start(&[("JITOCSP_LOG_REQUEST_SAMPLE", "1.0"), ("JITOCSP_LOG_FORMAT", "json")]);
    for _ in 0..3 {
        all.post(&request);
    }
    let none = Server::start(&[]);
    for _ in 0..3 {
        none.post(&request);
    }
    let started = Instant::now();
    let lines = loop {
        let lines: Vec<String> =
            all.log_text().lines().filter(|l| l.contains("jitocsp::request")).map(str::to_owned).collect();
        if lines.len() >= 3 || started.elapsed() > Duration::from_secs(20) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 3, "{}", all.log_text());
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON log lines");
    assert_eq!(line["fields"]["outcome"], "successful", "{line}");
    assert_eq!(line["fields"]["cert"], format!("{issuer}:7201"), "{line}");
    assert!(!none.log_text().contains("jitocsp::request"), "{}", none.log_text());
}

/// A TLS leaf whose AIA OCSP URL points at `server`.
fn tls_leaf(pki: &Pki, server: &Server, serial_hex: &str) -> PathBuf {
    let extensions = format!(
        "authorityInfoAccess=OCSP;URI:{}\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n\
         keyUsage=critical,digitalSignature\n",
        server.url()
    );
    pki.leaf_with_extensions("tls", serial_hex, Some(&extensions))
}

/// An nginx (not the system one) run in a temporary directory, killed on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(config: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config.replace("@DIR@", dir.path().to_str().unwrap())).unwrap();
        let prefix = format!("{}/", dir.path().display());
        let check = Command::new("nginx").args(["-t", "-p", &prefix, "-c"]).arg(&conf).output().expect("nginx");
        assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
        let child = Command::new("nginx")
            .args(["-p", &prefix, "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        Nginx { child, dir }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `openssl s_client -status` against a TLS server that staples: combined output.
fn s_client_status(port: u16, ca: &Path) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost", "-status"])
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

const STAPLING_NGINX: &str = r#"
daemon off;
master_process off;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path @DIR@/client_temp;
    proxy_temp_path @DIR@/proxy_temp;
    fastcgi_temp_path @DIR@/fastcgi_temp;
    uwsgi_temp_path @DIR@/uwsgi_temp;
    scgi_temp_path @DIR@/scgi_temp;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name localhost;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_stapling on;
        ssl_stapling_verify on;
        ssl_trusted_certificate @CA@;
        location / { return 200 "ok\n"; }
    }
}
"#;

/// nginx with `ssl_stapling on` fetches its OCSP response from jitocsp (the leaf's AIA URL),
/// verifies it, and staples it: `openssl s_client -status` sees a good, successful response.
#[test]
fn nginx_staples_a_verified_response() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Program("nginx")]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let server = Server::start(&[]);
    let leaf = tls_leaf(&pki, &server, "7301");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
    let chain = pki.file("chain.pem");
    let mut pem = std::fs::read(&leaf).unwrap();
    pem.extend(std::fs::read(pki.file("ca.pem")).unwrap());
    std::fs::write(&chain, pem).unwrap();

    let port = free_port();
    let config = STAPLING_NGINX
        .replace("@PORT@", &port.to_string())
        .replace("@CERT@", chain.to_str().unwrap())
        .replace("@KEY@", pki.file("leaf.key").to_str().unwrap())
        .replace("@CA@", pki.file("ca.pem").to_str().unwrap());
    let nginx = Nginx::start(&config);
    wait_for_port(port);

    // nginx fetches the response lazily, after the first handshake: ask until it staples.
    let started = Instant::now();
    let text = loop {
        let text = s_client_status(port, &pki.file("ca.pem"));
        if text.contains("OCSP Response Status: successful") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nginx never stapled a response:\n{text}\nnginx error log:\n{}\njitocsp log:\n{}",
            nginx.error_log(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(text.contains("Cert Status: good"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let serial_line = "Serial Number: 7301";
    assert!(text.contains(serial_line), "{text}");
    // nginx asked by GET (cacheable), and verified the response before stapling it.
    assert!(server.metric("jitocsp_requests_total", &["method=\"GET\"", "outcome=\"successful\""]) >= 1.0);
    let errors = nginx.error_log();
    assert!(!errors.contains("OCSP_basic_verify") && !errors.contains("certificate status request failed"), "{errors}");
}

/// Least privilege: the responder runs as `jitocsp_responder` (deploy/postgres/roles.sql),
/// which can read but not change a status; `jitocsp_admin` can.
#[test]
fn responder_serves_with_the_read_only_role_which_cannot_change_a_status() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("r1", "7401");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap()], &[]);

    let owner = database_url();
    let roles = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/roles.sql");
    let applied =
        Command::new("psql").args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &owner, "-f"]).arg(&roles).output().unwrap();
    assert!(
        applied.status.success(),
        "roles.sql (the owner needs CREATEROLE: scripts/services.sh up grants it): {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let password = "responder-test-password";
    for role in ["jitocsp_responder", "jitocsp_admin"] {
        let (ok, text) = psql(&owner, &format!("ALTER ROLE {role} PASSWORD '{password}'"));
        assert!(ok, "{text}");
    }
    let responder_url = url_as("jitocsp_responder", password);
    let admin_url = url_as("jitocsp_admin", password);

    let server = Server::start(&[("DATABASE_URL", responder_url.as_str())]);
    let request = pki.request(&cert, "-sha1");
    let text = openssl_check_response(&pki, &server.post(&request).body, &cert, "-sha1");
    assert!(text.contains(": good") && text.contains("Response verify OK"), "{text}");
    // (Readiness as a whole depends on every issuer in the shared test database; Postgres
    // itself must be fine with this role.)
    let ready = block_on(http(server.metrics_port, "GET", "/readyz", &[], &[])).unwrap();
    let ready = String::from_utf8_lossy(&ready.body);
    assert!(!ready.contains("postgres") && !ready.contains("listener"), "{ready}");

    // The responder's role cannot change a status, write the audit log, or add an issuer.
    let id = format!("(SELECT id FROM issuers WHERE name = '{issuer}')");
    for statement in [
        format!("UPDATE certificates SET reason = 1, revoked_at = now() WHERE issuer_id = {id}"),
        format!("INSERT INTO certificates (issuer_id, serial, not_after) VALUES ({id}, '\\x7402', now())"),
        format!("DELETE FROM certificates WHERE issuer_id = {id}"),
        "INSERT INTO audit_log (actor, action) VALUES ('x', 'y')".to_owned(),
        "DELETE FROM issuers WHERE false".to_owned(),
    ] {
        let (ok, text) = psql(&responder_url, &statement);
        assert!(!ok && text.contains("permission denied"), "{statement}: {text}");
    }
    let (ok, text) = psql(&responder_url, &format!("SELECT count(*) FROM certificates WHERE issuer_id = {id}"));
    assert!(ok && text == "1", "{text}");

    // The admin role revokes; the responder (read-only) sees it within a second.
    let out = jitocsp(
        &["admin", "revoke", "--issuer", &issuer, "--serial", "7401", "--reason", "keyCompromise"],
        &[("DATABASE_URL", admin_url.as_str())],
    );
    let revoked_at = Instant::now();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_revoked_everywhere(&[&server], &pki, &request, &cert, "-sha1", revoked_at);
    // The audit log is append-only, even for the admin.
    let (ok, text) = psql(&admin_url, "DELETE FROM audit_log WHERE false");
    assert!(!ok && text.contains("permission denied"), "{text}");
}

/// The CDN purge hook gets the certificate's purge tag (the Cache-Tag the responder sends) and
/// its GET URLs (the very URLs clients use, SHA-1 and SHA-256) on revoke, in the batch
/// contract (tags as arguments, the batch JSON on stdin and in the POST); a failing hook is
/// retried, by a running responder, until it succeeds, and the metrics say so.
#[test]
fn cdn_purge_hook_gets_tag_and_urls_and_is_retried() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("c1", "7501");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap()], &[]);

    // The command fails its first two calls, then succeeds; each call appends a line (its
    // arguments) and keeps the last JSON it read.
    let calls = pki.file("calls.log");
    let stdin = pki.file("stdin.json");
    let script = pki.file("purge.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\ncat > {stdin}\nn=$(wc -l < {calls})\n\
             [ \"$n\" -ge 3 ] || {{ echo 'CDN says no' >&2; exit 1; }}\n",
            calls = calls.display(),
            stdin = stdin.display()
        ),
    )
    .unwrap();
    let endpoint = HttpSink::accepting();
    let command = format!("sh {} \"$@\"", script.display());
    let purge_url = endpoint.url("/purge");
    let base = "http://ocsp.test.example/ocsp";
    let env = [
        ("JITOCSP_CDN_BASE_URL", base),
        ("JITOCSP_CDN_PURGE_COMMAND", command.as_str()),
        ("JITOCSP_CDN_PURGE_URL", purge_url.as_str()),
        ("JITOCSP_CDN_PURGE_TIMEOUT", "5s"),
    ];
    let server = Server::start(&env);

    // What clients ask and what the responder tags its answers with.
    let sha1 = pki.request(&cert, "-sha1");
    let sha256 = pki.request(&cert, "-sha256");
    let answer = server.get(&format!("/{}", b64(&sha1)), &[]);
    let tag = answer.header("cache-tag").to_owned();
    assert_eq!(tag, format!("{issuer}:7501"));

    let out = jitocsp(&["admin", "revoke", "--issuer", &issuer, "--serial", "7501", "--reason", "keyCompromise"], &env);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("CDN purge") && said.contains("pending"), "the operator is told: {said}");
    let pending = format!("SELECT count(*) FROM cdn_purges WHERE tag = '{tag}'");
    server.wait_until(Duration::from_secs(15), |_| psql(&database_url(), &pending).1 == "0");

    let lines: Vec<String> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').next() == Some(tag.as_str()))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "two failures, then success: {lines:?}");
    assert!(lines.iter().all(|l| l == &tag), "the same purge each time, its tag the only argument: {lines:?}");
    let batch: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stdin).unwrap()).unwrap();
    assert_eq!(batch["tags"], serde_json::json!([tag]));
    let urls: Vec<&str> = batch["urls"].as_array().unwrap().iter().filter_map(|u| u.as_str()).collect();
    for request in [&sha1, &sha256] {
        let raw = format!("{base}/{}", b64(request));
        assert!(urls.contains(&raw.as_str()), "{raw} not in {urls:?}");
        let encoded = format!("{base}/{}", b64(request).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"));
        assert!(urls.contains(&encoded.as_str()), "{encoded} not in {urls:?}");
    }
    // The GET URL really is what the responder answers (path without the base).
    let path = &urls[0][base.len()..];
    assert_eq!(server.get(path, &[]).status, 200);

    // The HTTP hook got the same JSON each time the command was tried with it (all 3 attempts).
    let mine: Vec<serde_json::Value> =
        endpoint.calls().iter().map(SinkCall::json).filter(|v| v["tags"] == serde_json::json!([tag])).collect();
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert!(mine.iter().all(|v| *v == batch), "{mine:?}");
    let purge = &batch["purges"][0];
    assert_eq!(purge["serial"], "7501");
    assert_eq!(purge["issuer"], issuer.as_str());
    assert_eq!(purge["action"], "revoke");
    assert_eq!(purge["urls"], batch["urls"]);

    // The responder's retries are counted (the admin's first attempt is not its own).
    assert!(server.metric("jitocsp_cdn_purges_total", &["hook=\"command\"", "result=\"failed\""]) >= 1.0);
    assert_eq!(server.metric("jitocsp_cdn_purges_total", &["hook=\"command\"", "result=\"done\""]), 1.0);
    assert!(server.metric("jitocsp_cdn_purge_duration_seconds_count", &["hook=\"http\""]) >= 1.0);
}

/// `nginx -t` and `systemd-analyze verify` (and the other checks of scripts/check-deploy.sh)
/// pass on the files in deploy/.
#[test]
fn deploy_files_pass_their_checks() {
    if skip_unless(&[
        Need::Openssl,
        Need::Program("nginx"),
        Need::Program("systemd-analyze"),
        Need::Program("redis-server"),
        Need::Program("redis-cli"),
        Need::Program("python3"),
    ]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join("scripts/check-deploy.sh"))
        .env("JITOCSP_BIN", BIN)
        .current_dir(root)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "scripts/check-deploy.sh failed:\n{text}");
    for check in ["nginx -t", "systemd-analyze verify"] {
        assert!(text.contains(&format!("ok: {check}")), "{check} did not run:\n{text}");
    }
}

/// The panic message of `work`, which must panic. (Not `#[should_panic]`: a test skipped for
/// want of its services returns without panicking, and must pass.)
fn panic_of(work: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).expect_err("it must panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// The harness: a metric that cannot be read (the metrics listener is gone) fails the test
/// instead of reading as 0, which would pass every `== 0` assertion.
#[test]
fn a_metric_that_cannot_be_read_fails_the_test() {
    if skip_unless(&[Need::Postgres, Need::Redis]) {
        return;
    }
    let mut server = Server::start(&[]);
    server.kill();
    let message = panic_of(|| {
        server.metric("jitocsp_signatures_total", &[]);
    });
    assert!(message.contains("cannot read /metrics"), "{message}");
}

/// The harness: a metric name that src/metrics.rs does not declare (a typo) fails the test
/// instead of reading as 0.
#[test]
fn an_undeclared_metric_fails_the_test() {
    if skip_unless(&[Need::Postgres, Need::Redis]) {
        return;
    }
    let server = Server::start(&[]);
    let message = panic_of(|| {
        server.metric("jitocsp_signature_total", &[]);
    });
    assert!(message.contains("is not declared in src/metrics.rs"), "{message}");
}
