//! What a test needs from outside the checkout, and what happens when it is absent.
//!
//! Every integration test starts with [`skip_unless`] naming the pieces it uses. Missing one,
//! a plain `cargo test` skips the test with one line on stderr naming the piece and the
//! command that provides it (`scripts/test.sh`), so that a bare checkout passes.
//! `scripts/test.sh` sets `JITOCSP_TEST_REQUIRE_ALL=1`: there a missing piece fails the test
//! instead, so no test passes there without running its body.
//!
//! Self-contained (std and the `redis` crate only): src/lib.rs includes this file for the
//! unit tests that run openssl.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Set by scripts/test.sh: every test must run, so a missing piece is a failure.
pub const REQUIRE_ALL: &str = "JITOCSP_TEST_REQUIRE_ALL";

/// One piece of a test's environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// `DATABASE_URL` (or `.local/env`) answers `psql`, which the tests also run.
    Postgres,
    /// `REDIS_URL` (or `.local/env`) answers PING.
    Redis,
    /// `JITOCSP_TEST_STANDBY_URL` names a database on a streaming standby, which answers.
    Standby,
    /// The services' TLS (`JITOCSP_TEST_TLS_DIR`, `JITOCSP_TEST_REDIS_TLS_PORT`, or
    /// `.local/env`): Postgres and Redis answer over TLS verified by the test CA.
    TlsServices,
    /// `JITOCSP_TEST_REDIS_CLUSTER` names seed nodes (HOST:PORT,...) of a Redis Cluster whose
    /// state is ok.
    RedisCluster,
    /// `JITOCSP_TEST_REDIS_CLUSTER_TLS` names seed nodes (HOST:PORT,...) of a Redis Cluster that
    /// speaks TLS (`scripts/services.sh cluster-tls-up`) and whose state, asked over TLS
    /// verified by the services' test CA, is ok.
    RedisClusterTls,
    /// The `openssl` command, which makes every test PKI and checks responses.
    Openssl,
    /// SoftHSM2's PKCS#11 module and its tools, as scripts/softhsm.sh finds them.
    SoftHsm2,
    /// The external judge: tests/judges/judge.py with a Python that has cryptography and pkilint.
    Judge,
    /// Another program on PATH (nginx, redis-server, systemd-analyze, ...).
    Program(&'static str),
    /// An open-files limit of at least this many.
    OpenFiles(u64),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Postgres => write!(f, "Postgres"),
            Need::Redis => write!(f, "Redis"),
            Need::Standby => write!(f, "a Postgres streaming standby"),
            Need::TlsServices => write!(f, "Postgres and Redis over TLS"),
            Need::RedisCluster => write!(f, "a Redis Cluster"),
            Need::RedisClusterTls => write!(f, "a Redis Cluster over TLS"),
            Need::Openssl => write!(f, "openssl"),
            Need::SoftHsm2 => write!(f, "SoftHSM2"),
            Need::Judge => write!(f, "the external judge"),
            Need::Program(name) => write!(f, "{name}"),
            Need::OpenFiles(n) => write!(f, "an open-files limit of {n}"),
        }
    }
}

/// True when the calling test must return at once because a piece in `needs` is absent; it
/// then has printed why. Panics instead when `JITOCSP_TEST_REQUIRE_ALL` is set. Use as
/// `if skip_unless(&[Need::Postgres, Need::Redis]) { return; }`.
pub fn skip_unless(needs: &[Need]) -> bool {
    let Some((need, why)) = needs.iter().find_map(|need| probe(*need).err().map(|why| (need, why))) else {
        return false;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} needs {need}: {why} ({REQUIRE_ALL} is set, so a missing piece is a failure)");
    }
    // Straight to stderr: libtest captures print!/eprint! of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: needs {need}: {why}; scripts/test.sh provides it");
    true
}

/// Whether `need` is present (Err says why not). Probed once per test process.
fn probe(need: Need) -> Result<(), String> {
    static PROBED: Mutex<Option<HashMap<Need, Result<(), String>>>> = Mutex::new(None);
    if let Some(known) = PROBED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&need) {
        return known.clone();
    }
    // Probed without the lock: a probe may take seconds, and two tests probing one piece at
    // once find the same answer.
    let found = match need {
        Need::Postgres => service_url("DATABASE_URL").and_then(|url| psql_answers(&url, "DATABASE_URL", "SELECT 1")),
        Need::Standby => standby_answers(),
        Need::TlsServices => tls_answers(),
        Need::RedisCluster => redis_cluster_answers(),
        Need::RedisClusterTls => redis_cluster_tls_answers(),
        Need::Redis => service_url("REDIS_URL").and_then(|url| redis_answers(&url)),
        Need::Openssl => program("openssl"),
        Need::SoftHsm2 => softhsm2(),
        Need::Judge => judge(),
        Need::Program(name) => program(name),
        Need::OpenFiles(n) => open_files(n),
    };
    PROBED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(need, found.clone());
    found
}

/// The checkout (tests run with the package root as their working directory, but a test may
/// have changed it).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `name` from the environment, or when unset the one in `.local/env` (which
/// `scripts/services.sh up` writes).
pub fn service_url(name: &str) -> Result<String, String> {
    if let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        return Ok(value);
    }
    let text = std::fs::read_to_string(root().join(".local/env")).unwrap_or_default();
    text.lines()
        .map(|line| line.trim().trim_start_matches("export ").trim())
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .ok_or_else(|| format!("{name} is not set and not in .local/env"))
}

/// Whether `name` is an executable file in a directory of PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

fn program(name: &str) -> Result<(), String> {
    if on_path(name) {
        Ok(())
    } else {
        Err(format!("{name} is not on PATH"))
    }
}

/// Runs `program args` with a deadline for connecting; Err names what failed (never the
/// arguments, which may hold a password).
fn succeeds(program_name: &str, args: &[&str], what: &str) -> Result<String, String> {
    program(program_name)?;
    let output = Command::new(program_name)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program_name}: {e}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{what}: {}", stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim()))
}

fn psql_answers(url: &str, name: &str, query: &str) -> Result<(), String> {
    succeeds("psql", &["-X", "-tA", url, "-c", query], &format!("cannot query {name} with psql")).map(drop)
}

fn standby_answers() -> Result<(), String> {
    const NAME: &str = "JITOCSP_TEST_STANDBY_URL";
    let url = std::env::var(NAME).ok().filter(|v| !v.is_empty()).ok_or_else(|| format!("{NAME} is not set"))?;
    let recovering =
        succeeds("psql", &["-X", "-tA", &url, "-c", "SELECT pg_is_in_recovery()"], &format!("cannot query {NAME}"))?;
    if recovering == "t" {
        Ok(())
    } else {
        Err(format!("{NAME} is not a standby (pg_is_in_recovery() is {recovering:?})"))
    }
}

/// The services' TLS files (ca.pem, ...): `JITOCSP_TEST_TLS_DIR` (or the one in `.local/env`),
/// else this checkout's `.local/tls`.
pub fn tls_dir() -> PathBuf {
    service_url("JITOCSP_TEST_TLS_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join(".local/tls"))
}

/// Both services answer over TLS verified by the test CA (which names 127.0.0.1).
fn tls_answers() -> Result<(), String> {
    let ca = tls_dir().join("ca.pem");
    if !ca.is_file() {
        return Err(format!("{} does not exist", ca.display()));
    }
    let ca = ca.to_string_lossy().into_owned();
    let database = service_url("DATABASE_URL")?;
    let separator = if database.contains('?') { '&' } else { '?' };
    let database = format!("{database}{separator}sslmode=verify-full&sslrootcert={ca}");
    let query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let ssl = succeeds("psql", &["-X", "-tA", &database, "-c", query], "Postgres refuses verified TLS")?;
    if ssl != "t" {
        return Err(format!("Postgres answered without TLS ({ssl:?})"));
    }
    let redis = service_url("REDIS_URL")?;
    let port = match service_url("JITOCSP_TEST_REDIS_TLS_PORT") {
        Ok(port) => port,
        Err(_) => redis::parse_redis_url(&redis)
            .and_then(|url| url.port())
            .map(|port| (port + 1).to_string())
            .ok_or("REDIS_URL names no port")?,
    };
    let pong = succeeds(
        "redis-cli",
        &["--tls", "--cacert", &ca, "-h", "127.0.0.1", "-p", &port, "ping"],
        "Redis refuses verified TLS",
    )?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("Redis on TLS port {port} answered {pong:?}"))
    }
}

fn redis_cluster_answers() -> Result<(), String> {
    const NAME: &str = "JITOCSP_TEST_REDIS_CLUSTER";
    let seeds = std::env::var(NAME).ok().filter(|v| !v.is_empty()).ok_or_else(|| format!("{NAME} is not set"))?;
    let first = seeds.split(',').next().unwrap_or_default();
    let client = redis::Client::open(format!("redis://{first}")).map_err(|e| format!("{NAME}: {e}"))?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {first}: {e}"))?;
    let info: String =
        redis::cmd("CLUSTER").arg("INFO").query(&mut connection).map_err(|e| format!("{first}: CLUSTER INFO: {e}"))?;
    if info.lines().any(|l| l.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err(format!("the Redis Cluster at {first} is not ok (scripts/services.sh cluster-up)"))
    }
}

/// The first seed answers `CLUSTER INFO` with `cluster_state:ok` over TLS verified by the
/// services' CA (redis-cli: independent of the client under test).
fn redis_cluster_tls_answers() -> Result<(), String> {
    const NAME: &str = "JITOCSP_TEST_REDIS_CLUSTER_TLS";
    let seeds = std::env::var(NAME).ok().filter(|v| !v.is_empty()).ok_or_else(|| format!("{NAME} is not set"))?;
    let first = seeds.split(',').next().unwrap_or_default();
    let (host, port) = first.rsplit_once(':').ok_or_else(|| format!("{NAME}: {first:?} is not HOST:PORT"))?;
    let ca = tls_dir().join("ca.pem").to_string_lossy().into_owned();
    program("redis-cli")?;
    // Bounded: redis-cli waits for a TLS handshake without limit, and a plaintext node never
    // answers one.
    let info = succeeds(
        "timeout",
        &["10", "redis-cli", "--tls", "--cacert", &ca, "-h", host, "-p", port, "cluster", "info"],
        &format!("{first} does not answer verified TLS within 10 s"),
    )?;
    if info.lines().any(|l| l.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err(format!("the Redis Cluster at {first} is not ok over TLS (scripts/services.sh cluster-tls-up): {info:?}"))
    }
}

fn redis_answers(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL is not a Redis URL: {e}"))?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to REDIS_URL: {e}"))?;
    redis::cmd("PING").query::<String>(&mut connection).map(drop).map_err(|e| format!("REDIS_URL does not answer: {e}"))
}

fn softhsm2() -> Result<(), String> {
    for tool in ["softhsm2-util", "pkcs11-tool"] {
        program(tool)?;
    }
    let script = root().join("scripts/softhsm.sh");
    succeeds("bash", &[&script.to_string_lossy(), "module"], "no SoftHSM2 PKCS#11 module (libsofthsm2.so)").map(drop)
}

/// The external judge's interpreter and script: `JITOCSP_TEST_PYTHON` and `JITOCSP_TEST_JUDGE`
/// (scripts/test.sh sets both: the Python it installed cryptography and pkilint for), else
/// `python3` and tests/judges/judge.py of this checkout.
pub fn judge_command() -> (String, PathBuf) {
    let python = std::env::var("JITOCSP_TEST_PYTHON").ok().filter(|v| !v.is_empty()).unwrap_or("python3".into());
    let script = std::env::var_os("JITOCSP_TEST_JUDGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/judges/judge.py"));
    (python, script)
}

fn judge() -> Result<(), String> {
    let (python, script) = judge_command();
    if !script.is_file() {
        return Err(format!("the judge {} does not exist (JITOCSP_TEST_JUDGE)", script.display()));
    }
    let import = "import cryptography, pkilint";
    succeeds(&python, &["-c", import], &format!("{python} cannot {import} (JITOCSP_TEST_PYTHON)")).map(drop)
}

fn open_files(needed: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").map_err(|e| format!("/proc/self/limits: {e}"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).ok_or("no Max open files")?;
    let limit = line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    if limit >= needed {
        Ok(())
    } else {
        Err(format!("ulimit -n is {limit}"))
    }
}
