//! The admin CLI tests' fixture: the binary run with a test actor, its outcome, and an issuer
//! of its own on a site of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use jitocsp::feed::payload::{StatusChanges, CHANNEL};
use jitocsp::serial::Serial;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, NoTls};

use super::common::{unique, without_hash_parameters, Pki, Site, BIN};

// ---------------------------------------------------------------------------------------------
// Environment and process helpers

pub(crate) struct Env {
    pub(crate) database_url: String,
}

/// The shared test database, migrated once.
pub(crate) fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = Env { database_url: super::common::database_url() };
        let out = run_with(&["migrate"], None, &[("DATABASE_URL", env.database_url.as_str())], None);
        assert!(out.status.success(), "migrate failed: {}", text(&out.stderr));
        env
    })
}

/// Runs the binary with `vars` on top of the inherited environment (for `migrate`, which
/// needs only a database).
pub(crate) fn run_with(args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)], dir: Option<&Path>) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    // No ./jitocsp.toml is picked up from a temporary directory.
    cmd.args(args).current_dir(dir.unwrap_or(scratch.path()));
    output_of(cmd, stdin, vars)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a command did: exit code, stdout, stderr.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    pub(crate) fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    pub(crate) fn fails(self, code: i32, needles: &[&str]) -> Self {
        assert_eq!(self.code, code, "expected exit {code}\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
}

/// A CA (EC P-256, PKCS#8 key) in a temporary directory, registered under a unique name, on a
/// site (configuration file) of its own.
pub(crate) struct Fixture {
    pub(crate) pki: Pki,
    pub(crate) name: String,
    pub(crate) id: i32,
    pub(crate) site: Site,
}

pub(crate) fn unique_name(test: &str) -> String {
    unique(&format!("t-{test}"))
}

impl Fixture {
    /// Makes the CA files but does not register the issuer.
    pub(crate) fn files(test: &str) -> Fixture {
        Fixture { pki: Pki::new(), name: unique_name(test), id: 0, site: Site::new() }
    }

    /// Makes the CA and registers it.
    pub(crate) async fn new(test: &str) -> Fixture {
        env();
        Fixture::register(Fixture::files(test)).await
    }

    /// As [`Fixture::new`], on a database of its own: for tests of pending purges, which every
    /// responder on a database retries (with its own key prefix).
    pub(crate) async fn with_own_database(test: &str) -> Fixture {
        let f = Fixture { pki: Pki::new(), name: unique_name(test), id: 0, site: Site::with_own_database() };
        Fixture::register(f).await
    }

    pub(crate) async fn register(mut f: Fixture) -> Fixture {
        // An absolute key path, so that a responder started elsewhere finds it.
        let signer = format!("file:{}", f.path("ca.key").display());
        f.admin(&["issuer", "add", "--name", &f.name.clone(), "--cert", "ca.pem", "--signer", &signer], None).ok();
        f.id = f.db().await.query_one("SELECT id FROM issuers WHERE name = $1", &[&f.name]).await.unwrap().get(0);
        f
    }

    pub(crate) async fn db(&self) -> tokio_postgres::Client {
        jitocsp::db::connect(&self.site.database_url, &Default::default()).await.expect("connect to Postgres")
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.pki.file(file)
    }

    /// Issues a leaf certificate with this serial (hex); returns its file name.
    pub(crate) fn leaf(&self, serial_hex: &str) -> String {
        let name = format!("leaf-{serial_hex}");
        self.pki.leaf(&name, serial_hex);
        format!("{name}.pem")
    }

    /// Runs `jitocsp admin ARGS` in the fixture directory, on the fixture's site.
    pub(crate) fn admin(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        self.admin_env(args, stdin, &[])
    }

    pub(crate) fn admin_env(&self, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Ran {
        let mut all_args = vec!["admin"];
        all_args.extend_from_slice(args);
        let mut cmd = self.site.command(&all_args);
        cmd.current_dir(self.pki.path());
        let out = output_of(cmd, stdin, vars);
        Ran { code: out.status.code().unwrap_or(-1), stdout: text(&out.stdout), stderr: text(&out.stderr) }
    }

    pub(crate) fn revoke(&self, serial: &str, reason: &str) -> Ran {
        self.admin(&["revoke", "--issuer", &self.name, "--serial", serial, "--reason", reason], None)
    }

    /// (reason, revoked_at is set, changed_at is set) of a serial, or None without a row.
    pub(crate) async fn state(&self, serial: &str) -> Option<(Option<i16>, bool, bool)> {
        let serial = Serial::from_hex(serial).unwrap();
        self.db()
            .await
            .query_opt(
                "SELECT reason, revoked_at IS NOT NULL, changed_at IS NOT NULL FROM certificates \
                 WHERE issuer_id = $1 AND serial = $2",
                &[&self.id, &serial.as_bytes()],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    pub(crate) async fn count(&self, sql_table_and_filter: &str) -> i64 {
        self.db()
            .await
            .query_one(&format!("SELECT count(*) FROM {sql_table_and_filter}"), &[&self.id])
            .await
            .unwrap()
            .get(0)
    }

    /// Starts a responder on the fixture's site, asks it about each serial in all four CertID
    /// forms (SHA-1 and SHA-256, hash parameters NULL and absent), stops it, and returns the
    /// Redis entries that appeared: what a real responder wrote for those certificates, found
    /// by SCAN rather than by the key function the purge uses.
    pub(crate) fn responder_writes(&self, serials: &[&str]) -> BTreeMap<String, Vec<u8>> {
        let before = self.site.redis_keys();
        let server = self.site.serve(&[]);
        for serial in serials {
            for digest in ["-sha1", "-sha256"] {
                let request = self.pki.request_serial(serial, digest);
                for request in [without_hash_parameters(&request), request] {
                    let response = server.post(&request);
                    assert_eq!(response.status, 200);
                    assert!(response.body.len() > 5, "{serial}: not a signed response: {:?}", response.body);
                }
            }
        }
        let expected = 4 * serials.len();
        let mut written = BTreeMap::new();
        server.wait_until(Duration::from_secs(10), |_| {
            written = self.site.redis_entries();
            written.retain(|k, _| !before.contains(k));
            written.len() >= expected
        });
        server.stop();
        assert_eq!(written.len(), expected, "one key per certificate and CertID form: {:?}", written.keys());
        written
    }
}

/// Runs `cmd` as the actor `admin-cli-test`, with `vars` on top, writing `stdin` (if any) from
/// another thread so that a large input cannot deadlock against the child's output.
pub(crate) fn output_of(mut cmd: Command, stdin: Option<&str>, vars: &[(&str, &str)]) -> Output {
    cmd.env("JITOCSP_ACTOR", "admin-cli-test")
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run jitocsp");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().unwrap()
}

/// The shared test database.
pub(crate) async fn db() -> tokio_postgres::Client {
    jitocsp::db::connect(&env().database_url, &Default::default()).await.expect("connect to Postgres")
}

/// Runs blocking test code (a responder, its HTTP client, Redis reads) on a thread outside the
/// test's runtime, which cannot nest another.
pub(crate) fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().unwrap())
}

/// The keys of `entries`.
pub(crate) fn keys_of(entries: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    entries.keys().cloned().collect()
}

/// LISTENs on the status channel of `database_url` (before returning), like a responder.
pub(crate) async fn listen(database_url: &str) -> Listener {
    let (client, mut connection) = tokio_postgres::connect(database_url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.unwrap();
    Listener { _client: client, rx }
}

/// A LISTENing connection and the notifications it received.
pub(crate) struct Listener {
    _client: tokio_postgres::Client,
    rx: UnboundedReceiver<(String, String)>,
}

impl Listener {
    /// The next notification about certificates of `issuer_id`, parsed; panics after 5 s
    /// without one (a failure: notifications arrive at commit).
    pub(crate) async fn next_for(&mut self, issuer_id: i32) -> StatusChanges {
        loop {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            assert_eq!(channel, CHANNEL);
            let changes = StatusChanges::parse(&payload).unwrap();
            if changes.issuer_id == issuer_id {
                return changes;
            }
        }
    }
}
