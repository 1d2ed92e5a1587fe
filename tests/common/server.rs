//! A running `jitocsp serve` and a minimal HTTP client to talk to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{block_on, free_port, site, unique, Site};

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

    pub(super) fn start_with(site: &Site, env: &[(&str, &str)]) -> Server {
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
        // stdout too, so that the log is everything the process printed.
        let log_file = std::fs::File::create(&log).unwrap();
        command.env("JITOCSP_SERVER_WORKERS", "2").stdout(log_file.try_clone().unwrap()).stderr(log_file);
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

/// GET on the metrics listener: (status, body).
pub fn metrics_endpoint(server: &Server, path: &str) -> (u16, String) {
    let response = block_on(http(server.metrics_port, "GET", path, &[], &[])).unwrap();
    (response.status, String::from_utf8_lossy(&response.body).into_owned())
}
