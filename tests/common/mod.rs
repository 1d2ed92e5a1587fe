//! Shared harness for the integration tests: real Postgres and Redis (from `DATABASE_URL` and
//! `REDIS_URL`, which `scripts/services.sh up` provides), real keys made with openssl, and the
//! real `jitocsp` binary run as a child process. Every test first calls [`skip_unless`] with
//! the pieces it needs (skip.rs).
#![allow(dead_code, unused_imports)] // each test file uses a part of the harness

mod cluster;
mod der;
mod judge;
mod pki;
mod private_redis;
mod server;
mod sink;
mod site;
mod skip;
mod softhsm;
mod tls;

pub use cluster::*;
pub use der::*;
pub use judge::*;
pub use pki::*;
pub use private_redis::*;
pub use server::*;
pub use sink::*;
pub use site::*;
pub use skip::*;
pub use softhsm::*;
pub use tls::*;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_jitocsp");

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

pub(crate) fn must(program: &str, args: &[&str], dir: &Path) -> Output {
    let output = run(program, args, dir);
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}
