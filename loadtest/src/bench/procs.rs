//! The servers the benchmark measures: jitocsp, nginx (a static file: the hot path's
//! reference) and `openssl ocsp` (the cold path's). Each runs as a child process on a free
//! loopback port, with its log in the work directory, and is stopped when dropped.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A server we started.
pub struct Server {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
    /// `openssl ocsp -multi`: its children ignore SIGTERM, see [`Server::drop`].
    kill_children: bool,
}

impl Server {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf, kill_children: bool) -> anyhow::Result<Server> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Server { name, child, log, kill_children })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until GET `path` on `addr` answers 200 (up to `within`), or fails if the process exits.
    pub fn wait_ready(&mut self, addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.alive() {
                bail!("{} exited during start-up (log: {})", self.name, self.log.display());
            }
            if matches!(http_get(addr, path), Ok((200, _, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} did not answer GET {path} on {addr} within {within:?} (log: {})", self.name, self.log.display())
    }
}

impl Drop for Server {
    /// SIGTERM, then SIGKILL after 5 s. OpenSSL 3.0's `ocsp -multi` children ignore SIGTERM
    /// and spin forever on a connection closed before a request arrived, so they get SIGKILL
    /// first, once the parent can no longer respawn them.
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let pid = self.pid();
        let children = if self.kill_children { children_of(&[pid]) } else { Vec::new() };
        signal("TERM", &[pid]);
        if self.kill_children {
            std::thread::sleep(Duration::from_millis(200));
            signal("KILL", &children);
            signal("KILL", &children_of(&[pid]));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Processes whose parent is one of `pids` (nginx workers, Postgres backends, openssl children).
pub fn children_of(pids: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (ppid) follows ") STATE ".
            let ppid = stat.rfind(')').and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<u32>().ok());
            ppid.is_some_and(|p| pids.contains(&p))
        })
        .collect()
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One HTTP/1.0 GET, connection closed after: (status, head length, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, usize, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)? + 4;
    let status = std::str::from_utf8(&raw[..head_end])
        .ok()
        .and_then(|h| h.split(' ').nth(1)?.parse::<u16>().ok())
        .ok_or_else(bad)?;
    Ok((status, head_end, raw.split_off(head_end)))
}

/// How jitocsp is started.
pub struct JitocspSpec<'a> {
    /// The binary, work directory, services and key prefix of the run.
    pub run: &'a crate::cli::RunArgs,
    pub workers: usize,
    pub backend: &'a str,
    /// Further environment, e.g. the CDN purge hook's settings.
    pub env: &'a [(String, String)],
}

/// `jitocsp serve` with `local_entries` in the local tier (0: every hit is a Redis GET).
pub fn jitocsp(
    spec: &JitocspSpec,
    tag: &str,
    local_entries: usize,
) -> anyhow::Result<(Server, SocketAddr, SocketAddr)> {
    let (listen, metrics) = (free_addr()?, free_addr()?);
    let mut command = Command::new(&spec.run.jitocsp);
    command
        .args(["serve", "--listen", &listen.to_string(), "--metrics-listen", &metrics.to_string()])
        .env("DATABASE_URL", &spec.run.database_url)
        .env("REDIS_URL", &spec.run.redis_url)
        .env("JITOCSP_CACHE_LOCAL_ENTRIES", local_entries.to_string())
        .env("JITOCSP_CACHE_KEY_PREFIX", &spec.run.key_prefix)
        .env("JITOCSP_SERVER_WORKERS", spec.workers.to_string())
        .env("JITOCSP_SIGNING_P256_BACKEND", spec.backend)
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    let mut server = Server::spawn("jitocsp serve", command, spec.run.work.join(format!("jitocsp.{tag}.log")), false)?;
    server.wait_ready(metrics, "/healthz", Duration::from_secs(30))?;
    Ok((server, listen, metrics))
}

/// nginx answering every path with `work/www/resp.der`, tuned as a static-file server of a
/// few hundred bytes should be (open_file_cache, no access log, long keep-alive), on its own
/// port. `sendfile off`: with sendfile, nginx writes the head and then sends the file, two TCP
/// segments per answer; without, one `writev` of both. Measured here (docs/benchmarks.md, "The
/// client"), that costs nginx 9-10 us of CPU per answer instead of 13-14, and the client less
/// too: the stronger reference.
pub fn nginx(work: &Path, workers: usize, response: &[u8]) -> anyhow::Result<(Server, SocketAddr)> {
    let addr = free_addr()?;
    let w = work.display();
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::create_dir_all(work.join("ngx-tmp"))?;
    std::fs::write(work.join("www/resp.der"), response)?;
    // nginx drops root's privileges to `nobody` unless told otherwise; the work directory may
    // not be readable by nobody.
    let user = if is_root() { "user root root;" } else { "" };
    let conf = format!(
        "# generated by jitocsp-loadtest bench: the hot path's reference, one real response as a static file
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {w}/ngx-tmp/body;
    proxy_temp_path {w}/ngx-tmp/proxy;
    fastcgi_temp_path {w}/ngx-tmp/fastcgi;
    uwsgi_temp_path {w}/ngx-tmp/uwsgi;
    scgi_temp_path {w}/ngx-tmp/scgi;
    sendfile off;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    types {{ }}
    default_type application/ocsp-response;
    server {{
        listen {addr};
        root {w}/www;
        location / {{ rewrite ^ /resp.der break; }}
    }}
}}
"
    );
    let conf_path = work.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut command = Command::new("nginx");
    command.arg("-p").arg(work).arg("-c").arg(&conf_path).arg("-e").arg(work.join("nginx-error.log"));
    let mut server = Server::spawn("nginx", command, work.join("nginx.out"), false)?;
    server.wait_ready(addr, "/x", Duration::from_secs(30))?;
    Ok((server, addr))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// `openssl ocsp` answering from `index.txt`, signing with the CA key, 2 processes. A fresh
/// one per run (see [`Server::drop`]); it is ready when `probe` (a request path) is answered.
/// `-resp_no_certs -resp_key_id` make its answers what jitocsp's are (ResponderID byKey, no
/// certificates); `-nmin 10` gives them a nextUpdate far enough ahead for the
/// verifier, which allows 60 s of clock skew.
pub fn openssl_ocsp(work: &Path, addr: SocketAddr, ca: &Path, key: &Path, probe: &str) -> anyhow::Result<Server> {
    let mut command = Command::new("openssl");
    command
        .args(["ocsp", "-index"])
        .arg(work.join("index.txt"))
        .args(["-port", &addr.port().to_string(), "-rsigner"])
        .arg(ca)
        .arg("-rkey")
        .arg(key)
        .arg("-CA")
        .arg(ca)
        .args(["-multi", "2", "-nmin", "10", "-resp_no_certs", "-resp_key_id"]);
    let mut server = Server::spawn("openssl ocsp", command, work.join("openssl-ocsp.log"), true)?;
    server.wait_ready(addr, probe, Duration::from_secs(60))?;
    Ok(server)
}
