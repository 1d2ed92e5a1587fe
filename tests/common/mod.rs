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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_jitocsp");

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a test Postgres: run scripts/services.sh up")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL must point at a test Redis: run scripts/services.sh up")
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
        let out = self.file(&format!("{}.req", unique("q")));
        must(
            "openssl",
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                digest,
                "-cert",
                cert.to_str().unwrap(),
                "-no_nonce",
                "-reqout",
                out.to_str().unwrap(),
            ],
            self.path(),
        );
        std::fs::read(out).unwrap()
    }
}

/// Runs `jitocsp` with the test services' URLs and `env`.
pub fn jitocsp(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env("DATABASE_URL", database_url()).env("REDIS_URL", redis_url());
    for (k, v) in env {
        command.env(k, v);
    }
    command.stdin(Stdio::null()).output().expect("running jitocsp")
}

pub fn jitocsp_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = jitocsp(args, env);
    assert!(
        output.status.success(),
        "jitocsp {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Migrates, adds the PKI's CA as a new issuer, returns its name.
pub fn add_issuer(pki: &Pki) -> String {
    jitocsp_ok(&["migrate"], &[]);
    let name = unique("issuer");
    let signer = format!("file:{}", pki.file("ca.key").display());
    jitocsp_ok(
        &[
            "admin",
            "issuer",
            "add",
            "--name",
            &name,
            "--cert",
            pki.file("ca.pem").to_str().unwrap(),
            "--signer",
            &signer,
        ],
        &[],
    );
    name
}

/// A running `jitocsp serve`, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts a server with its own Redis key prefix plus `env`, and waits until it is ready.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let metrics_port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("jitocsp-serve")));
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .env("DATABASE_URL", database_url())
            .env("REDIS_URL", redis_url())
            .env("JITOCSP_CACHE_KEY_PREFIX", unique("t"))
            .env("JITOCSP_SERVER_WORKERS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("starting jitocsp serve");
        let server = Server { child, port, metrics_port, log };
        server.wait_until(Duration::from_secs(20), |s| {
            s.metrics_get("/healthz").is_some_and(|(status, _)| status == 200)
                && s.metrics_text().contains("jitocsp_listener_connected 1")
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

    pub fn metrics_text(&self) -> String {
        self.metrics_get("/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// Sum of every series of metric `name` whose labels contain all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter(|line| labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn post(&self, body: &[u8]) -> HttpResponse {
        block_on(http(self.port, "POST", "/", &[("Content-Type", "application/ocsp-request")], body)).unwrap()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        block_on(http(self.port, "GET", path, headers, &[])).unwrap()
    }

    pub fn stop(mut self) {
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

/// The external judge (tests/judges/judge.py): Python `cryptography` parses the response,
/// verifies the signature, and pkilint lints it. Returns the judge's output; panics if it failed.
pub fn judge(pki: &Pki, response: &[u8], args: &[&str]) -> String {
    let file = pki.file(&format!("{}.der", unique("judged")));
    std::fs::write(&file, response).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/judges/judge.py");
    let mut all = vec![script.to_str().unwrap(), file.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = run("python3", &all, pki.path());
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "judge {args:?} refused the response:\n{text}");
    text
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
    jitocsp_ok(&["migrate"], &[]);
    let name = unique("issuer");
    let ca = pki.file("ca.pem");
    let mut args = vec!["admin", "issuer", "add", "--name", &name, "--cert", ca.to_str().unwrap(), "--signer", signer];
    if let Some(cert) = responder_cert {
        args.extend_from_slice(&["--responder-cert", cert.to_str().unwrap()]);
    }
    jitocsp_ok(&args, env);
    name
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
