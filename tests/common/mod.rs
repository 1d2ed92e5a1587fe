//! Shared harness for the integration tests: real Postgres and Redis (from `DATABASE_URL` and
//! `REDIS_URL`, which `scripts/services.sh up` provides), real keys made with openssl, and the
//! real `jitocsp` binary run as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_jitocsp");

/// `DATABASE_URL`, or when unset the one in `.local/env` (which `scripts/services.sh up` writes).
pub fn database_url() -> String {
    service_url("DATABASE_URL")
}

/// `REDIS_URL`, or when unset the one in `.local/env`.
pub fn redis_url() -> String {
    service_url("REDIS_URL")
}

fn service_url(name: &str) -> String {
    if let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        return value;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/env");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    text.lines()
        .map(|line| line.trim().trim_start_matches("export ").trim())
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .unwrap_or_else(|| panic!("{name} is not set and not in .local/env: run scripts/services.sh up"))
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    let output =
        Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    output
}

fn must(program: &str, args: &[&str], dir: &Path) -> Output {
    let output = run(program, args, dir);
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A test CA (EC P-256) with leaf certificates, made by openssl in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        pki_with_ca(P256)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Issues `NAME.pem` with serial `serial_hex`, valid for 30 days. (Expired certificates
    /// are imported in the stdin form with a past notAfter: OpenSSL 3.0 cannot back-date.)
    pub fn leaf(&self, name: &str, serial_hex: &str) -> PathBuf {
        self.leaf_with_extensions(name, serial_hex, None)
    }

    /// As [`Pki::leaf`], with X.509v3 extensions in openssl's `-extfile` syntax.
    pub fn leaf_with_extensions(&self, name: &str, serial_hex: &str, extensions: Option<&str>) -> PathBuf {
        let out = format!("{name}.pem");
        let serial = format!("0x{serial_hex}");
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-out",
            &out,
        ];
        let ext_file = format!("{name}.ext");
        if let Some(extensions) = extensions {
            std::fs::write(self.file(&ext_file), extensions).unwrap();
            args.extend_from_slice(&["-extfile", &ext_file]);
        }
        must("openssl", &args, self.path());
        self.file(&out)
    }

    /// A DER OCSP request for a serial of this CA, by serial alone.
    pub fn request_serial(&self, serial_hex: &str, digest: &str) -> Vec<u8> {
        let out = self.file(&format!("{}.req", unique("q")));
        let serial = format!("0x{serial_hex}");
        must(
            "openssl",
            &["ocsp", "-issuer", "ca.pem", digest, "-serial", &serial, "-no_nonce", "-reqout", out.to_str().unwrap()],
            self.path(),
        );
        std::fs::read(out).unwrap()
    }

    /// A DER OCSP request for `cert`, made by openssl (`-sha256` etc. via `digest`).
    pub fn request(&self, cert: &Path, digest: &str) -> Vec<u8> {
        self.request_certs(&[cert], digest)
    }

    /// One DER OCSP request with a CertID for each of `certs`, made by openssl.
    pub fn request_certs(&self, certs: &[&Path], digest: &str) -> Vec<u8> {
        let out = self.file(&format!("{}.req", unique("q")));
        let mut args = vec!["ocsp", "-issuer", "ca.pem", digest];
        for cert in certs {
            args.extend_from_slice(&["-cert", cert.to_str().unwrap()]);
        }
        args.extend_from_slice(&["-no_nonce", "-reqout", out.to_str().unwrap()]);
        must("openssl", &args, self.path());
        std::fs::read(out).unwrap()
    }
}

/// Runs `jitocsp` as configured by the default [`Site`], with `env` on top.
pub fn jitocsp(args: &[&str], env: &[(&str, &str)]) -> Output {
    site().jitocsp(args, env)
}

pub fn jitocsp_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    site().jitocsp_ok(args, env)
}

/// Migrates, adds the PKI's CA as a new issuer of the default [`Site`], returns its name.
pub fn add_issuer(pki: &Pki) -> String {
    site().add_issuer(pki)
}

/// The site that the free functions ([`jitocsp`], [`add_issuer`], [`Server::start`], ...) use:
/// one per test process, so every server and admin command of a test that does not make
/// its own [`Site`] still shares one configuration, as in production.
pub fn site() -> &'static Site {
    static SITE: std::sync::OnceLock<Site> = std::sync::OnceLock::new();
    SITE.get_or_init(Site::new)
}

/// One deployment as an operator runs it: a configuration file that `jitocsp serve` and
/// `jitocsp admin` both read (database, Redis, Redis key prefix). Each site has a key prefix
/// of its own, so the Redis keys under it are exactly those its responders wrote; a site made
/// by [`Site::with_own_database`] also owns every row (and so every pending purge) it sees.
pub struct Site {
    pub config: PathBuf,
    pub key_prefix: String,
    pub database_url: String,
    pub redis_url: String,
    own_database: Option<String>,
}

impl Site {
    /// A site on the test services, with a key prefix of its own.
    pub fn new() -> Site {
        Site::with(database_url(), redis_url(), None)
    }

    /// A site whose Redis is `redis_url`.
    pub fn with_redis(redis_url: &str) -> Site {
        Site::with(database_url(), redis_url.to_owned(), None)
    }

    /// A site with a database of its own (created and migrated here, dropped with the site):
    /// for tests of what any responder sharing the database would also act on.
    pub fn with_own_database() -> Site {
        let name = unique("jitocsp_t").replace('-', "_");
        let created = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &database_url(), "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql");
        assert!(
            created.status.success(),
            "cannot create database {name} (the test role needs CREATEDB: scripts/services.sh up grants it): {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let url = with_database(&database_url(), &name);
        let site = Site::with(url, redis_url(), Some(name));
        site.jitocsp_ok(&["migrate"], &[]);
        site
    }

    fn with(database_url: String, redis_url: String, own_database: Option<String>) -> Site {
        let key_prefix = unique("t");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sites");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join(format!("{key_prefix}.toml"));
        // Debug formatting of an ASCII string is a valid TOML basic string. The Redis timeout:
        // on a saturated 2-core machine a GET or SET can exceed the 100 ms default, and a
        // timed-out SET or a GET answered by signing is right but not what tests count (a
        // stopped Redis still refuses connections at once).
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = {database_url:?}\n\n[redis]\nurl = {redis_url:?}\ntimeout_ms = 5000\n\n\
                 [cache]\nkey_prefix = {key_prefix:?}\n"
            ),
        )
        .unwrap();
        Site { config, key_prefix, database_url, redis_url, own_database }
    }

    /// `jitocsp --config SITE ARGS`: the file decides (the inherited `DATABASE_URL` and
    /// `REDIS_URL` are removed); `env` of the callers overrides it as an operator's would.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("JITOCSP_CACHE_KEY_PREFIX")
            .stdin(Stdio::null());
        command
    }

    pub fn jitocsp(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().expect("running jitocsp")
    }

    pub fn jitocsp_ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let output = self.jitocsp(args, env);
        assert!(
            output.status.success(),
            "jitocsp {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Migrates, adds the PKI's CA as a new issuer, returns its name.
    pub fn add_issuer(&self, pki: &Pki) -> String {
        let signer = format!("file:{}", pki.file("ca.key").display());
        self.add_issuer_with(pki, &signer, None, &[])
    }

    /// Adds the PKI's CA as a new issuer signed by `signer` (and a delegated responder
    /// certificate, if given), with `env`; returns its name.
    pub fn add_issuer_with(
        &self,
        pki: &Pki,
        signer: &str,
        responder_cert: Option<&Path>,
        env: &[(&str, &str)],
    ) -> String {
        self.jitocsp_ok(&["migrate"], &[]);
        let name = unique("issuer");
        let ca = pki.file("ca.pem");
        let mut args =
            vec!["admin", "issuer", "add", "--name", &name, "--cert", ca.to_str().unwrap(), "--signer", signer];
        if let Some(cert) = responder_cert {
            args.extend_from_slice(&["--responder-cert", cert.to_str().unwrap()]);
        }
        self.jitocsp_ok(&args, env);
        name
    }

    /// Imports serials (hex) of `issuer` with a notAfter, by the stdin form.
    pub fn import_serials(&self, issuer: &str, serials: &[&str], not_after: &str) {
        let input: String = serials.iter().map(|s| format!("{s},{not_after}\n")).collect();
        let mut child = self
            .command(&["admin", "import", "--issuer", issuer, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running jitocsp");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "import: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts `jitocsp serve` on this site's configuration plus `env`; waits until it is ready.
    pub fn serve(&self, env: &[(&str, &str)]) -> Server {
        Server::start_with(self, env)
    }

    /// One psql query on this site's database (trimmed, unaligned output); panics on failure.
    pub fn sql(&self, query: &str) -> String {
        let output = Command::new("psql").args(["-X", &self.database_url, "-tAc", query]).output().expect("psql");
        assert!(output.status.success(), "psql {query}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn issuer_id(&self, name: &str) -> i32 {
        let id = self.sql(&format!("SELECT id FROM issuers WHERE name = '{name}'"));
        id.parse().unwrap_or_else(|_| panic!("issuer {name}: id {id:?}"))
    }

    /// Every Redis key under this site's prefix with its value: what this site's responders
    /// wrote and nobody purged. Found by SCAN, not by the key layout the code under test uses.
    pub fn redis_entries(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        let pattern = format!("{}:*", self.key_prefix);
        block_on(async {
            let client = redis::Client::open(self.redis_url.as_str()).expect("REDIS_URL");
            let mut conn = client.get_multiplexed_async_connection().await.expect("connect to Redis");
            let mut keys = std::collections::BTreeSet::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .expect("SCAN");
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let mut entries = std::collections::BTreeMap::new();
            for key in keys {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
                if let Some(value) = value {
                    entries.insert(key, value);
                }
            }
            entries
        })
    }

    pub fn redis_keys(&self) -> std::collections::BTreeSet<String> {
        self.redis_entries().into_keys().collect()
    }

    /// Drops this site's own database now, with its open connections: Postgres lost.
    pub fn drop_database(&self) {
        let name = self.own_database.as_deref().expect("only a site with its own database can lose it");
        let output = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &database_url(), "-c"])
            .arg(format!("DROP DATABASE {name} WITH (FORCE)"))
            .output()
            .expect("psql");
        assert!(output.status.success(), "drop {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        if let Some(name) = &self.own_database {
            let _ = Command::new("psql")
                .args(["-X", "-q", &database_url(), "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .output();
        }
    }
}

/// Replaces the database name in a postgres:// URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (prefix, _) = base.rsplit_once('/').expect("database URL with a path");
    format!("{prefix}/{name}{query}")
}

/// A running `jitocsp serve`, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts a server of the default [`Site`] plus `env`, and waits until it is ready.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_with(site(), env)
    }

    fn start_with(site: &Site, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let metrics_port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("jitocsp-serve")));
        let mut command = site.command(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ]);
        command.env("JITOCSP_SERVER_WORKERS", "2").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("starting jitocsp serve");
        let server = Server { child, port, metrics_port, log };
        server.wait_until(Duration::from_secs(20), |s| {
            s.metrics_get("/healthz").is_some_and(|(status, _)| status == 200)
                && s.metrics_get("/metrics").is_some_and(|(_, body)| body.contains("jitocsp_listener_connected 1"))
        });
        server
    }

    pub fn wait_until(&self, limit: Duration, mut ready: impl FnMut(&Server) -> bool) {
        let started = Instant::now();
        while !ready(self) {
            assert!(started.elapsed() < limit, "server not ready within {limit:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn metrics_get(&self, path: &str) -> Option<(u16, String)> {
        let response = block_on(http(self.metrics_port, "GET", path, &[], &[])).ok()?;
        Some((response.status, String::from_utf8_lossy(&response.body).into_owned()))
    }

    /// The Prometheus text of /metrics. Panics when it cannot be fetched: a metric that cannot
    /// be read must fail the test, not read as 0.
    pub fn metrics_text(&self) -> String {
        match self.metrics_get("/metrics") {
            Some((200, body)) => body,
            other => panic!("cannot read /metrics on port {}: {other:?}; log:\n{}", self.metrics_port, self.log_text()),
        }
    }

    /// Sum of every series of metric `name` whose labels contain all of `labels` (0 when the
    /// metric has no series yet). `name` must be declared in src/metrics.rs, so that a typo
    /// fails instead of reading as 0.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        assert_declared_metric(name);
        self.metrics_text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter(|line| labels.iter().all(|l| line.contains(l)))
            .map(|line| {
                let value = line.rsplit(' ').next().unwrap_or_default();
                value.parse::<f64>().unwrap_or_else(|_| panic!("unreadable metric line {line:?}"))
            })
            .sum()
    }

    /// Log lines of this server that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log_text().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    pub fn post(&self, body: &[u8]) -> HttpResponse {
        block_on(http(self.port, "POST", "/", &[("Content-Type", "application/ocsp-request")], body)).unwrap()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        block_on(http(self.port, "GET", path, headers, &[])).unwrap()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    /// Kills the process, keeping its ports and log.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics unless `name` (less a `_bucket`, `_count` or `_sum` suffix) is a metric name in
/// src/metrics.rs.
fn assert_declared_metric(name: &str) {
    const DECLARED: &str = include_str!("../../src/metrics.rs");
    let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    assert!(
        DECLARED.contains(&format!("\"{name}\"")) || DECLARED.contains(&format!("\"{base}\"")),
        "metric {name} is not declared in src/metrics.rs"
    );
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str).unwrap_or("")
    }
}

/// A minimal HTTP/1.1 client (one request per connection), so tests can send exactly the
/// bytes they mean (raw `+`, `//`, spaces) and open thousands of connections at once.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<HttpResponse> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head_text = std::str::from_utf8(&raw[..split]).map_err(|_| bad())?;
    let mut lines = head_text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) && !head {
        body = dechunk(&body).ok_or_else(bad)?;
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Runs `openssl ocsp` on a saved response about `cert` (CertID hashed with `digest`) and
/// returns its combined output.
pub fn openssl_check_response(pki: &Pki, response: &[u8], cert: &Path, digest: &str) -> String {
    let file = pki.file(&format!("{}.der", unique("resp")));
    std::fs::write(&file, response).unwrap();
    let output = run(
        "openssl",
        &[
            "ocsp",
            "-respin",
            file.to_str().unwrap(),
            "-issuer",
            "ca.pem",
            digest,
            "-cert",
            cert.to_str().unwrap(),
            "-CAfile",
            "ca.pem",
        ],
        pki.path(),
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The external judge's interpreter and script: `JITOCSP_TEST_PYTHON` and `JITOCSP_TEST_JUDGE`
/// (scripts/test.sh sets both: the Python it installed cryptography and pkilint for), else
/// `python3` and tests/judges/judge.py of this checkout.
pub fn judge_command() -> (String, PathBuf) {
    let python = std::env::var("JITOCSP_TEST_PYTHON").ok().filter(|v| !v.is_empty()).unwrap_or("python3".into());
    let script = std::env::var_os("JITOCSP_TEST_JUDGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/judges/judge.py"));
    assert!(script.is_file(), "the judge {} does not exist (JITOCSP_TEST_JUDGE)", script.display());
    (python, script)
}

/// The external judge (tests/judges/judge.py): Python `cryptography` parses the response,
/// verifies the signature, and pkilint lints it. Returns the judge's output; panics if it failed.
pub fn judge(pki: &Pki, response: &[u8], args: &[&str]) -> String {
    let file = pki.file(&format!("{}.der", unique("judged")));
    std::fs::write(&file, response).unwrap();
    let (python, script) = judge_command();
    let mut all = vec![script.to_str().unwrap(), file.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = run(&python, &all, pki.path());
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "judge {args:?} refused the response:\n{text}");
    text
}

/// Puts one HTTP exchange through the judge: the response is verified against the PKI's CA
/// and linted, every CertID of `request` must be echoed byte for byte (`--request`, which also
/// checks the nonce), and the HTTP headers must agree with the DER (`--headers`). `args` add
/// the expectations (status, cert status, caching policy, ...).
pub fn judge_exchange(pki: &Pki, request: &[u8], response: &HttpResponse, args: &[&str]) -> String {
    assert_eq!(response.status, 200, "HTTP status");
    let name = unique("exchange");
    let request_file = pki.file(&format!("{name}.req"));
    std::fs::write(&request_file, request).unwrap();
    let headers_file = pki.file(&format!("{name}.headers"));
    let headers: String = response.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(&headers_file, headers).unwrap();
    let ca = pki.file("ca.pem");
    let mut all = vec![
        "--issuer",
        ca.to_str().unwrap(),
        "--request",
        request_file.to_str().unwrap(),
        "--headers",
        headers_file.to_str().unwrap(),
        "--lint",
    ];
    all.extend_from_slice(args);
    judge(pki, &response.body, &all)
}

/// Invariant 1 on several instances at once. `revoked_at` is when `admin revoke` returned.
/// Asks every instance about `cert` until each has answered revoked; an answer of good to a
/// request sent more than a second after `revoked_at` fails the test, whichever instance gave
/// it and however long the others took, as does any answer that does not verify. Once an
/// instance answered revoked it must keep doing so. Returns, per instance, how long after
/// `revoked_at` the first request that got revoked was sent.
pub fn assert_revoked_everywhere(
    servers: &[&Server],
    pki: &Pki,
    request: &[u8],
    cert: &Path,
    digest: &str,
    revoked_at: Instant,
) -> Vec<Duration> {
    let deadline = revoked_at + Duration::from_secs(1);
    let mut seen: Vec<Option<Duration>> = vec![None; servers.len()];
    while seen.iter().any(Option::is_none) {
        for (i, server) in servers.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let sent = Instant::now();
            let text = openssl_check_response(pki, &server.post(request).body, cert, digest);
            assert!(text.contains("Response verify OK"), "instance {i}: {text}");
            if text.contains(": revoked") {
                seen[i] = Some(sent - revoked_at);
            } else {
                assert!(text.contains(": good"), "instance {i}: {text}");
                assert!(
                    sent <= deadline,
                    "instance {i} answered good to a request sent {:?} after the revocation returned:\n{text}",
                    sent - revoked_at
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, server) in servers.iter().enumerate() {
        for _ in 0..5 {
            let text = openssl_check_response(pki, &server.post(request).body, cert, digest);
            assert!(text.contains(": revoked") && text.contains("Response verify OK"), "instance {i} again: {text}");
        }
    }
    seen.into_iter().map(Option::unwrap_or_default).collect()
}

/// Minimal DER reading and writing, to make request variants openssl does not produce.
pub mod der {
    /// The TLVs of `data` as (tag, contents). Single-octet tags, definite lengths.
    pub fn items(mut data: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let tag = data[0];
            let (len, header) = match data[1] {
                n if n < 0x80 => (n as usize, 2),
                n => {
                    let k = (n & 0x7f) as usize;
                    (data[2..2 + k].iter().fold(0usize, |acc, b| acc << 8 | *b as usize), 2 + k)
                }
            };
            out.push((tag, &data[header..header + len]));
            data = &data[header + len..];
        }
        out
    }

    pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }
}

const SHA1_OID: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// `request` with the NULL parameters of its hash AlgorithmIdentifiers left out (as some
/// clients send them): the other two CertID forms a responder must echo exactly.
pub fn without_hash_parameters(request: &[u8]) -> Vec<u8> {
    fn rewrite(tag: u8, contents: &[u8]) -> Vec<u8> {
        if tag & 0x20 == 0 {
            return der::tlv(tag, contents);
        }
        let children = der::items(contents);
        if let [(0x06, oid), (0x05, [])] = children.as_slice() {
            if tag == 0x30 && (*oid == SHA1_OID || *oid == SHA256_OID) {
                return der::tlv(0x30, &der::tlv(0x06, oid));
            }
        }
        der::tlv(tag, &children.iter().flat_map(|(t, c)| rewrite(*t, c)).collect::<Vec<u8>>())
    }
    let [(tag, contents)] = der::items(request)[..] else { panic!("not one DER element") };
    let out = rewrite(tag, contents);
    assert_ne!(out, request, "the request had no NULL hash parameters");
    out
}

/// `request` (made with -no_nonce) with a nonce extension (RFC 9654) of `nonce` added.
pub fn with_nonce(request: &[u8], nonce: &[u8]) -> Vec<u8> {
    let [(0x30, outer)] = der::items(request)[..] else { panic!("not an OCSPRequest") };
    let [(0x30, tbs), ref rest @ ..] = der::items(outer)[..] else { panic!("no TBSRequest") };
    assert!(der::items(tbs).iter().all(|(t, _)| *t != 0xa2), "the request already has extensions");
    let nonce_oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
    let extension = der::tlv(0x30, &[der::tlv(0x06, &nonce_oid), der::tlv(0x04, &der::tlv(0x04, nonce))].concat());
    let extensions = der::tlv(0xa2, &der::tlv(0x30, &extension));
    let tbs = der::tlv(0x30, &[tbs, &extensions].concat());
    let rest: Vec<u8> = rest.iter().flat_map(|(t, c)| der::tlv(*t, c)).collect();
    der::tlv(0x30, &[tbs, rest].concat())
}

/// Standard base64 of `der`.
pub fn b64(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

// ---- PKCS#11 (SoftHSM2) and key-type helpers, used by tests/pkcs11.rs ----

/// A test CA whose key is made by `openssl genpkey` with `ca_key_args` (e.g. an RSA or P-384
/// CA), with the same files as [`Pki::new`] (`ca.key` PKCS#8, `ca.pem`, `leaf.key`, `leaf.csr`).
pub fn pki_with_ca(ca_key_args: &[&str]) -> Pki {
    let pki = Pki { dir: tempfile::tempdir().unwrap() };
    let d = pki.path();
    make_ca(d, "ca", &unique("jitocsp test CA"), ca_key_args);
    must("openssl", &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"], d);
    must("openssl", &["req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr"], d);
    pki
}

/// Makes a self-signed CA certificate `STEM.pem` named `cn`, with its PKCS#8 key `STEM.key`
/// made by `openssl genpkey` with `key_args`, in `dir`.
pub fn make_ca(dir: &Path, stem: &str, cn: &str, key_args: &[&str]) {
    let key = format!("{stem}.key");
    let cert = format!("{stem}.pem");
    let mut genpkey = vec!["genpkey", "-out", &key];
    genpkey.extend_from_slice(key_args);
    must("openssl", &genpkey, dir);
    let subject = format!("/O=jitocsp tests/CN={cn}");
    must(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &subject,
            "-days",
            "30",
            "-out",
            &cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
        dir,
    );
}

/// `openssl genpkey` arguments for an EC P-256 key.
pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A delegated OCSP responder certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck) issued
/// by the PKI's CA, with a new key made by `openssl genpkey` with `key_args`. Returns the
/// paths of its PKCS#8 key and PEM certificate.
pub fn delegated_responder(pki: &Pki, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let d = pki.path();
    let name = unique("responder");
    let (key, csr, cert, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let mut genpkey = vec!["genpkey", "-out", key.as_str()];
    genpkey.extend_from_slice(key_args);
    must("openssl", &genpkey, d);
    must("openssl", &["req", "-new", "-key", &key, "-subj", "/CN=jitocsp test responder", "-out", &csr], d);
    std::fs::write(
        d.join(&ext),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\nnoCheck=ignored\n",
    )
    .unwrap();
    must(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x7e57",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
        d,
    );
    (d.join(key), d.join(cert))
}

/// Adds the PKI's CA as a new issuer signed by `signer` (and a delegated responder
/// certificate, if given), with `env` (SOFTHSM2_CONF, the PIN variable); returns its name.
pub fn add_issuer_with(pki: &Pki, signer: &str, responder_cert: Option<&Path>, env: &[(&str, &str)]) -> String {
    site().add_issuer_with(pki, signer, responder_cert, env)
}

/// A SoftHSM2 token in a temporary directory, made by scripts/softhsm.sh.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    pub module: String,
}

impl SoftHsm {
    pub const PIN_VAR: &'static str = "JITOCSP_TEST_PKCS11_PIN";

    pub fn new() -> SoftHsm {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm.sh");
        let dir = tempfile::tempdir().unwrap();
        let label: String = unique("t").chars().take(32).collect();
        let pin = format!("{:08}", std::process::id());
        let script = script.to_str().unwrap();
        must("bash", &[script, "init", dir.path().to_str().unwrap(), &label, &pin], dir.path());
        let module = String::from_utf8(must("bash", &[script, "module"], dir.path()).stdout).unwrap().trim().to_owned();
        let conf = dir.path().join("softhsm2.conf");
        SoftHsm { dir, conf, label, pin, module }
    }

    /// Imports a PEM private key as object `object` with CKA_ID `id_hex`.
    pub fn import(&self, object: &str, id_hex: &str, key: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm.sh");
        must(
            "bash",
            &[
                script.to_str().unwrap(),
                "import",
                self.dir.path().to_str().unwrap(),
                &self.label,
                &self.pin,
                object,
                id_hex,
                key.to_str().unwrap(),
            ],
            self.dir.path(),
        );
    }

    /// The signer URI of object `object` (and CKA_ID `id_hex`, if given).
    pub fn uri(&self, object: &str, id_hex: Option<&str>) -> String {
        let id = id_hex
            .map(|h| (0..h.len()).step_by(2).map(|i| format!("%{}", &h[i..i + 2])).collect::<String>())
            .map(|id| format!(";id={id}"))
            .unwrap_or_default();
        format!(
            "pkcs11:token={};object={object}{id}?module-path={}&pin-source=env:{}",
            self.label,
            self.module,
            Self::PIN_VAR
        )
    }

    /// Environment for jitocsp: the token's configuration and the PIN.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.to_str().unwrap().to_owned()), (Self::PIN_VAR, self.pin.clone())]
    }

    /// The token's directory (inside the token dir; one per token).
    pub fn token_dir(&self) -> PathBuf {
        std::fs::read_dir(self.dir.path().join("tokens")).unwrap().next().unwrap().unwrap().path()
    }
}

/// `openssl ocsp` against a running server for `cert` of `pki`, verifying with the CA;
/// returns stdout and stderr together (with `-resp_text`).
pub fn openssl_ocsp_query(pki: &Pki, server: &Server, cert: &Path, digest: &str) -> String {
    let ca = pki.file("ca.pem");
    let output = run(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            ca.to_str().unwrap(),
            digest,
            "-cert",
            cert.to_str().unwrap(),
            "-url",
            &server.url(),
            "-CAfile",
            ca.to_str().unwrap(),
            "-no_nonce",
            "-resp_text",
        ],
        pki.path(),
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// GET on the metrics listener: (status, body).
pub fn metrics_endpoint(server: &Server, path: &str) -> (u16, String) {
    let response = block_on(http(server.metrics_port, "GET", path, &[], &[])).unwrap();
    (response.status, String::from_utf8_lossy(&response.body).into_owned())
}
