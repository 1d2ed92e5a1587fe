//! `jitocsp migrate` and `jitocsp admin ...`, run as the real binary against real Postgres and
//! Redis (`DATABASE_URL`, `REDIS_URL`; when unset, read from `.local/env`, which
//! `scripts/services.sh` writes).
//!
//! Every test creates its own issuer with a unique name, from certificates that openssl makes
//! in a temporary directory, so the tests run in parallel on one database. Each fixture is a
//! [`Site`]: the admin commands and any responder it starts read one configuration file, as in
//! production, so a purge is checked against the keys a real responder wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jitocsp::feed::payload::{StatusChange, CHANNEL};
use jitocsp::serial::Serial;
use tokio_postgres::{AsyncMessage, NoTls};

mod common;
use common::{make_ca, unique, with_database, without_hash_parameters, Pki, Site, P256};

// ---------------------------------------------------------------------------------------------
// Environment and process helpers

struct Env {
    database_url: String,
}

/// The shared test database, migrated once.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = Env { database_url: common::database_url() };
        let out = run_with(&["migrate"], None, &[("DATABASE_URL", env.database_url.as_str())], None);
        assert!(out.status.success(), "migrate failed: {}", text(&out.stderr));
        env
    })
}

/// Runs the binary with `vars` on top of the inherited environment (for `migrate`, which
/// needs only a database).
fn run_with(args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)], dir: Option<&Path>) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jitocsp"));
    cmd.args(args)
        // No ./jitocsp.toml is picked up from a temporary directory.
        .current_dir(dir.unwrap_or(scratch.path()))
        .env("JITOCSP_ACTOR", "admin-cli-test")
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    spawn_with_input(cmd, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a command did: exit code, stdout, stderr.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    fn fails(self, code: i32, needles: &[&str]) -> Self {
        assert_eq!(self.code, code, "expected exit {code}\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
}

/// A CA (EC P-256, PKCS#8 key) in a temporary directory, registered under a unique name, on a
/// site (configuration file) of its own.
struct Fixture {
    pki: Pki,
    name: String,
    id: i32,
    site: Site,
}

fn unique_name(test: &str) -> String {
    unique(&format!("t-{test}"))
}

impl Fixture {
    /// Makes the CA files but does not register the issuer.
    fn files(test: &str) -> Fixture {
        Fixture { pki: Pki::new(), name: unique_name(test), id: 0, site: Site::new() }
    }

    /// Makes the CA and registers it.
    async fn new(test: &str) -> Fixture {
        env();
        Fixture::register(Fixture::files(test)).await
    }

    /// As [`Fixture::new`], on a database of its own: for tests of pending purges, which every
    /// responder on a database retries (with its own key prefix).
    async fn with_own_database(test: &str) -> Fixture {
        let f = Fixture { pki: Pki::new(), name: unique_name(test), id: 0, site: Site::with_own_database() };
        Fixture::register(f).await
    }

    async fn register(mut f: Fixture) -> Fixture {
        // An absolute key path, so that a responder started elsewhere finds it.
        let signer = format!("file:{}", f.path("ca.key").display());
        f.admin(&["issuer", "add", "--name", &f.name.clone(), "--cert", "ca.pem", "--signer", &signer], None).ok();
        f.id = f.db().await.query_one("SELECT id FROM issuers WHERE name = $1", &[&f.name]).await.unwrap().get(0);
        f
    }

    /// Removes this issuer and everything of it, so repeated runs do not grow the database.
    /// (Skipped when a test fails: what is left helps to see why.)
    async fn cleanup(self) {
        remove_issuers(&[&self.name]).await;
    }

    async fn db(&self) -> tokio_postgres::Client {
        jitocsp::db::connect(&self.site.database_url, &Default::default()).await.expect("connect to Postgres")
    }

    fn path(&self, file: &str) -> PathBuf {
        self.pki.file(file)
    }

    /// Issues a leaf certificate with this serial (hex); returns its file name.
    fn leaf(&self, serial_hex: &str) -> String {
        let name = format!("leaf-{serial_hex}");
        self.pki.leaf(&name, serial_hex);
        format!("{name}.pem")
    }

    /// Runs `jitocsp admin ARGS` in the fixture directory, on the fixture's site.
    fn admin(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        self.admin_env(args, stdin, &[])
    }

    fn admin_env(&self, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Ran {
        let mut all_args = vec!["admin"];
        all_args.extend_from_slice(args);
        let mut cmd = self.site.command(&all_args);
        cmd.current_dir(self.pki.path())
            .env("JITOCSP_ACTOR", "admin-cli-test")
            .env("RUST_LOG", "warn")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = spawn_with_input(cmd, stdin);
        Ran { code: out.status.code().unwrap_or(-1), stdout: text(&out.stdout), stderr: text(&out.stderr) }
    }

    fn revoke(&self, serial: &str, reason: &str) -> Ran {
        self.admin(&["revoke", "--issuer", &self.name, "--serial", serial, "--reason", reason], None)
    }

    /// (reason, revoked_at is set, changed_at is set) of a serial, or None without a row.
    async fn state(&self, serial: &str) -> Option<(Option<i16>, bool, bool)> {
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

    async fn count(&self, sql_table_and_filter: &str) -> i64 {
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
    fn responder_writes(&self, serials: &[&str]) -> BTreeMap<String, Vec<u8>> {
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

/// Runs `cmd`, writing `stdin` (if any) from another thread so that a large input cannot
/// deadlock against the child's output.
fn spawn_with_input(mut cmd: Command, stdin: Option<&str>) -> Output {
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

async fn remove_issuers(names: &[&str]) {
    let client = db().await;
    for table in ["pending_purges", "certificates", "audit_log"] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE issuer_id IN (SELECT id FROM issuers WHERE name = ANY($1))"),
                &[&names],
            )
            .await
            .unwrap();
    }
    client.execute("DELETE FROM issuers WHERE name = ANY($1)", &[&names]).await.unwrap();
}

/// The shared test database.
async fn db() -> tokio_postgres::Client {
    jitocsp::db::connect(&env().database_url, &Default::default()).await.expect("connect to Postgres")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn migrate_twice_is_fine() {
    let e = env();
    for _ in 0..2 {
        let out = run_with(&["migrate"], None, &[("DATABASE_URL", e.database_url.as_str())], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = run_with(&["migrate"], None, &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrates_on_a_fresh_database() {
    let name = format!("jitocsp_migtest_{}", std::process::id());
    let admin = db().await;
    // A role that cannot create the scratch database cannot run this test: that is a failure,
    // not a pass (scripts/services.sh up grants CREATEDB).
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create the scratch database {name}: {e:?}"));
    let url = with_database(&env().database_url, &name);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || run_with(&["migrate"], None, &[("DATABASE_URL", url.as_str())], None))
        })
        .collect();
    let outputs: Vec<Output> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let fresh = jitocsp::db::connect(&url, &Default::default()).await.unwrap();
    let versions: Vec<i32> = fresh
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(fresh);
    let _ = admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    for out in &outputs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let applied = outputs.iter().filter(|o| text(&o.stdout).contains("applied migrations")).count();
    assert_eq!(applied, 1, "exactly one run applies the schema");
    let known: Vec<i32> = jitocsp::db::migrate::MIGRATIONS.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, known);
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_add_list_and_refusals() {
    let f = Fixture::new("issuer").await;
    let list = f.admin(&["issuer", "list"], None).ok();
    assert!(list.stdout.contains(&f.name), "{}", list.stdout);

    // Same name again.
    f.admin(&["issuer", "add", "--name", &f.name, "--cert", "ca.pem", "--signer", "file:ca.key"], None)
        .fails(2, &["already"]);

    // Key mismatch: nothing written.
    let other = unique_name("mismatch");
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca.pem", "--signer", "file:leaf.key"], None)
        .fails(2, &["--signer", "file:leaf.key"]);
    let rows: i64 =
        db().await.query_one("SELECT count(*) FROM issuers WHERE name = $1", &[&other]).await.unwrap().get(0);
    assert_eq!(rows, 0);

    // Not a CA certificate; not a certificate; missing file; bad signer spec.
    let leaf = f.leaf("0a");
    f.admin(&["issuer", "add", "--name", &other, "--cert", &leaf, "--signer", "file:leaf.key"], None)
        .fails(2, &["not a CA certificate"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "leaf.key", "--signer", "file:ca.key"], None)
        .fails(2, &["leaf.key"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "absent.pem", "--signer", "file:ca.key"], None)
        .fails(2, &["absent.pem"]);
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca.pem", "--signer", "file:absent.key"], None)
        .fails(2, &["absent.key"]);

    // A delegated responder: needs id-kp-OCSPSigning, issued by the CA, and its own key.
    let d = f.pki.path();
    make_ca(d, "ca2", &unique_name("ca2"), P256);
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "resp.key"]);
    openssl(d, &["req", "-new", "-key", "resp.key", "-subj", "/CN=responder", "-out", "resp.csr"]);
    std::fs::write(d.join("ocsp.ext"), "extendedKeyUsage=OCSPSigning\n").unwrap();
    for (ca, out, ext) in
        [("ca2", "resp.pem", true), ("ca2", "resp-noeku.pem", false), ("ca", "resp-wrongca.pem", true)]
    {
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "resp.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "0x99",
            "-days",
            "10",
            "-out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if ext {
            args.extend(["-extfile".into(), "ocsp.ext".into()]);
        }
        openssl(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let delegated = unique_name("delegated");
    let add = |resp: &str, signer: &str| {
        f.admin(
            &["issuer", "add", "--name", &delegated, "--cert", "ca2.pem", "--signer", signer, "--responder-cert", resp],
            None,
        )
    };
    add("resp-noeku.pem", "file:resp.key").fails(2, &["OCSPSigning"]);
    add("resp-wrongca.pem", "file:resp.key").fails(2, &["not issued by the CA"]);
    add("resp.pem", "file:ca2.key").fails(2, &["--responder-cert"]);
    add("resp.pem", "file:resp.key").ok();
    let has_responder: bool = db()
        .await
        .query_one("SELECT responder_cert_der IS NOT NULL FROM issuers WHERE name = $1", &[&delegated])
        .await
        .unwrap()
        .get(0);
    assert!(has_responder);
    // The same CA certificate cannot be registered twice.
    f.admin(&["issuer", "add", "--name", &other, "--cert", "ca2.pem", "--signer", "file:ca2.key"], None)
        .fails(2, &["already registered"]);

    f.admin(&["import", "--issuer", "no-such-issuer", "-"], Some("01,2030-01-01T00:00:00Z\n"))
        .fails(2, &["no-such-issuer"]);
    remove_issuers(&[&delegated]).await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_files_and_stdin_idempotently() {
    let f = Fixture::new("import").await;
    let a = f.leaf("0100");
    let b = f.leaf("00ff02"); // top bit set: stored with a sign byte
    let c = f.leaf("0103");
    let mut bundle = std::fs::read(f.path(&b)).unwrap();
    bundle.extend(std::fs::read(f.path(&c)).unwrap());
    std::fs::write(f.path("bundle.pem"), bundle).unwrap();
    openssl(f.pki.path(), &["x509", "-in", &a, "-outform", "DER", "-out", "a.der"]);

    let out = f.admin(&["import", "--issuer", &f.name, "a.der", "bundle.pem"], None).ok();
    assert!(out.stdout.contains("3 inserted"), "{}", out.stdout);
    let out = f.admin(&["import", "--issuer", &f.name, &a, "bundle.pem"], None).ok();
    assert!(out.stdout.contains("0 inserted, 3 already present"), "{}", out.stdout);
    assert_eq!(f.state("ff02").await, Some((None, false, false)));

    let stdin =
        "# serial,notAfter\n0A:0B,2030-01-01T00:00:00Z\n\n0c0d,2030-06-01T12:00:00+02:00\n0100,2030-01-01T00:00:00Z\n";
    let out = f.admin(&["import", "--issuer", &f.name, "-"], Some(stdin)).ok();
    assert!(out.stdout.contains("2 inserted, 1 already present"), "{}", out.stdout);
    assert!(out.stderr.contains("different notAfter"), "{}", out.stderr);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 5);

    // Any bad input: exit 2, named, nothing written.
    f.admin(
        &["import", "--issuer", &f.name, "-"],
        Some("0e,2030-01-01T00:00:00Z\n0f,2030-01-01T00:00:00Z\nzz,2030-01-01T00:00:00Z\n"),
    )
    .fails(2, &["stdin line 3", "zz"]);
    f.admin(&["import", "--issuer", &f.name, "-"], Some("0e,2030-01-01T00:00:00Z\n0f,next year\n"))
        .fails(2, &["stdin line 2", "next year"]);
    let stranger = Fixture::files("stranger");
    let foreign = stranger.leaf("0e");
    std::fs::copy(stranger.path(&foreign), f.path("foreign.pem")).unwrap();
    let d = f.leaf("0d");
    f.admin(&["import", "--issuer", &f.name, &d, "foreign.pem"], None)
        .fails(2, &["foreign.pem", "not issued by issuer"]);
    f.admin(&["import", "--issuer", &f.name, &d, "leaf.key"], None).fails(2, &["leaf.key"]);
    f.admin(&["import", "--issuer", &f.name, &d, "missing.pem"], None).fails(2, &["missing.pem"]);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 5);
    assert_eq!(f.state("0d").await, None);
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'import'").await, 3);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_100k_rows_from_stdin() {
    let f = Fixture::new("bulk").await;
    let mut input = String::with_capacity(100_000 * 40);
    for i in 0..100_000u64 {
        input.push_str(&format!("{:016x},2031-01-01T00:00:00Z\n", 0x5000_0000_0000_0000u64 + i));
    }
    let started = Instant::now();
    let out = f.admin(&["import", "--issuer", &f.name, "-"], Some(&input)).ok();
    println!("100k-row stdin import took {:?}: {}", started.elapsed(), out.stdout.trim());
    assert!(out.stdout.contains("100000 inserted"), "{}", out.stdout);
    assert_eq!(f.count("certificates WHERE issuer_id = $1").await, 100_000);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_by_serial_serials_file_and_cert_file() {
    let f = Fixture::new("revoke").await;
    let files: Vec<String> = ["1a01", "1a02", "1a03", "1a04", "1a05"].iter().map(|s| f.leaf(s)).collect();
    let mut args = vec!["import", "--issuer", f.name.as_str()];
    args.extend(files.iter().map(String::as_str));
    f.admin(&args, None).ok();

    // --serial, colons and upper case.
    let out = f.revoke("1A:01", "keyCompromise").ok();
    assert!(out.stdout.contains("1 revoked, 0 already revoked"), "{}", out.stdout);
    assert_eq!(f.state("1a01").await, Some((Some(1), true, true)));

    // --serials-file: comments, blank lines, one already revoked (skipped, not an error).
    std::fs::write(f.path("serials.txt"), "# to revoke\n1a01\n\n1a:02\n1A03\n").unwrap();
    let out =
        f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "serials.txt", "--reason", "superseded"], None).ok();
    assert!(out.stdout.contains("2 revoked, 1 already revoked"), "{}", out.stdout);
    assert_eq!(f.state("1a01").await, Some((Some(1), true, true)), "kept its first reason");
    assert_eq!(f.state("1a02").await, Some((Some(4), true, true)));
    assert_eq!(f.state("1a03").await, Some((Some(4), true, true)));

    // --cert-file, with --at in the past.
    f.admin(
        &[
            "revoke",
            "--issuer",
            &f.name,
            "--cert-file",
            &files[3],
            "--reason",
            "cessationOfOperation",
            "--at",
            "2024-05-01T10:00:00Z",
        ],
        None,
    )
    .ok();
    let at: chrono::DateTime<chrono::Utc> = db()
        .await
        .query_one(
            "SELECT revoked_at FROM certificates WHERE issuer_id = $1 AND serial = $2",
            &[&f.id, &Serial::from_hex("1a04").unwrap().as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(at.to_rfc3339(), "2024-05-01T10:00:00+00:00");

    // A certificate of another CA in --cert-file: exit 2, named.
    let stranger = Fixture::files("stranger2");
    let foreign = stranger.leaf("1a05");
    std::fs::copy(stranger.path(&foreign), f.path("foreign.pem")).unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--cert-file", "foreign.pem", "--reason", "keyCompromise"], None)
        .fails(2, &["foreign.pem"]);
    assert_eq!(f.state("1a05").await, Some((None, false, false)));

    // One audit row per change: 1 + 2 + 1.
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 4);
    let actor: String = db()
        .await
        .query_one("SELECT actor FROM audit_log WHERE issuer_id = $1 AND action = 'revoke' LIMIT 1", &[&f.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, "admin-cli-test");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_bad_input_change_nothing() {
    let f = Fixture::new("dryrun").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("2b01,2030-01-01T00:00:00Z\n2b02,2030-01-01T00:00:00Z\n")).ok();
    let out = f
        .admin(&["revoke", "--issuer", &f.name, "--serial", "2b01", "--reason", "keyCompromise", "--dry-run"], None)
        .ok();
    assert!(out.stdout.contains("would revoke 2b01"), "{}", out.stdout);
    assert_eq!(f.state("2b01").await, Some((None, false, false)));

    f.revoke("2b01", "bogusReason").fails(2, &["bogusReason"]);
    f.revoke("2b01", "removeFromCRL").fails(2, &["removeFromCRL"]);
    f.revoke("2b0x", "keyCompromise").fails(2, &["2b0x"]);
    f.admin(
        &[
            "revoke",
            "--issuer",
            &f.name,
            "--serial",
            "2b01",
            "--reason",
            "keyCompromise",
            "--at",
            "2999-01-01T00:00:00Z",
        ],
        None,
    )
    .fails(2, &["future"]);
    f.admin(
        &["revoke", "--issuer", &f.name, "--serial", "2b01", "--reason", "keyCompromise", "--at", "last tuesday"],
        None,
    )
    .fails(2, &["last tuesday"]);
    f.admin(&["revoke", "--issuer", "no-such-issuer", "--serial", "2b01", "--reason", "keyCompromise"], None)
        .fails(2, &["no-such-issuer"]);
    // Exactly one input.
    f.admin(&["revoke", "--issuer", &f.name, "--reason", "keyCompromise"], None).fails(2, &[]);
    f.admin(
        &["revoke", "--issuer", &f.name, "--serial", "2b01", "--serials-file", "x", "--reason", "keyCompromise"],
        None,
    )
    .fails(2, &[]);

    // An unknown serial anywhere in the file: exit 2, named, and no serial of the file revoked.
    std::fs::write(f.path("serials.txt"), "2b01\n2b02\n2bff\n").unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "serials.txt", "--reason", "keyCompromise"], None)
        .fails(2, &["2bff", "serials.txt line 3"]);
    // A syntax error in the file: named by line.
    std::fs::write(f.path("bad.txt"), "2b01\nnot-a-serial\n").unwrap();
    f.admin(&["revoke", "--issuer", &f.name, "--serials-file", "bad.txt", "--reason", "keyCompromise"], None)
        .fails(2, &["bad.txt line 2"]);
    assert_eq!(f.state("2b01").await, Some((None, false, false)));
    assert_eq!(f.state("2b02").await, Some((None, false, false)));
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 0);
    assert_eq!(f.count("pending_purges WHERE issuer_id = $1").await, 0);
    f.cleanup().await;
}

/// Runs blocking test code (a responder, its HTTP client, Redis reads) on a thread outside the
/// test's runtime, which cannot nest another.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().unwrap())
}

/// The keys of `entries`.
fn keys_of(entries: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    entries.keys().cloned().collect()
}

/// A revocation deletes exactly the keys a real responder of the same configuration wrote for
/// that certificate (all four CertID forms) and no other, and notifies with the row's
/// changed_at. The responder is stopped before the revocation, so nothing but the admin CLI can
/// have removed them.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_purges_redis_and_notifies() {
    let f = Fixture::new("purge").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("3c01,2030-01-01T00:00:00Z\n3c02,2030-01-01T00:00:00Z\n")).ok();
    let revoked = off_runtime(|| f.responder_writes(&["3c01"]));
    let bystander = off_runtime(|| f.responder_writes(&["3c02"]));

    // Listen before revoking.
    let (listener, mut connection) = tokio_postgres::connect(&env().database_url, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute(&format!("LISTEN {CHANNEL}")).await.unwrap();

    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "3c01"], None).ok();
    assert!(status.stdout.contains("status:      good"), "{}", status.stdout);
    assert!(status.stdout.contains("present, ttl"), "the status command sees the responder's keys: {}", status.stdout);

    let out = f.revoke("3c01", "keyCompromise").ok();
    assert!(out.stdout.contains("purged"), "{}", out.stdout);
    let left = off_runtime(|| f.site.redis_keys());
    assert!(left.is_disjoint(&keys_of(&revoked)), "revoked keys left: {left:?}");
    assert_eq!(left, keys_of(&bystander), "the other certificate keeps its keys");
    assert_eq!(f.count("pending_purges WHERE issuer_id = $1").await, 0);

    // The notification names this certificate, as revoked, at the row's status version.
    let mine = loop {
        let (channel, payload) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a notification within 5 s").unwrap();
        assert_eq!(channel, CHANNEL);
        let change = StatusChange::parse(&payload).unwrap();
        if change.issuer_id == f.id {
            break change;
        }
    };
    assert_eq!(mine.serial, Serial::from_hex("3c01").unwrap());
    assert!(mine.revoked);
    let version: i64 = db()
        .await
        .query_one(
            "SELECT changed_version FROM certificates WHERE issuer_id = $1 AND serial = $2",
            &[&f.id, &mine.serial.as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine.version, version);

    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "3c01"], None).ok();
    for needle in ["status:      revoked", "keyCompromise (1)", "revoked_at:", "changed_at:", "not_after:", "absent"] {
        assert!(status.stdout.contains(needle), "status lacks {needle:?}:\n{}", status.stdout);
    }
    // Status of an unknown serial is not an error; it says so.
    let unknown = f.admin(&["status", "--issuer", &f.name, "--serial", "3cff"], None).ok();
    assert!(unknown.stdout.contains("no row"), "{}", unknown.stdout);
    f.cleanup().await;
}

/// Redis down at revocation: a pending purge is recorded and the responder's keys stay; `admin
/// purge` fails while Redis is down and, once it is back, deletes exactly those keys and the
/// row. On a database of its own, so that no other test's responder retries the row first.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_with_redis_down_leaves_a_pending_purge() {
    let f = Fixture::with_own_database("redisdown").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("4d01,2030-01-01T00:00:00Z\n")).ok();
    let written = off_runtime(|| f.responder_writes(&["4d01"]));

    let started = Instant::now();
    let out = f
        .admin_env(
            &["revoke", "--issuer", &f.name, "--serial", "4d01", "--reason", "keyCompromise"],
            None,
            &[("REDIS_URL", "redis://127.0.0.1:1")],
        )
        .ok();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(out.stderr.contains("pending"), "{}", out.stderr);
    assert_eq!(f.state("4d01").await, Some((Some(1), true, true)));
    let row = f
        .db()
        .await
        .query_one("SELECT attempts, last_error FROM pending_purges WHERE issuer_id = $1", &[&f.id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(row.get::<_, Option<String>>(1).is_some());
    assert_eq!(off_runtime(|| f.site.redis_entries()), written, "nothing could be deleted");

    // Status shows the pending purge; purge with Redis down is an operational failure.
    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "4d01"], None).ok();
    assert!(status.stdout.contains("pending purge: since"), "{}", status.stdout);
    f.admin_env(&["purge", "--issuer", &f.name, "--serial", "4d01"], None, &[("REDIS_URL", "redis://127.0.0.1:1")])
        .fails(1, &["4d01"]);

    // `admin purge` with Redis back settles it.
    f.admin(&["purge", "--issuer", &f.name, "--serial", "4d01"], None).ok();
    assert_eq!(off_runtime(|| f.site.redis_keys()), BTreeSet::new(), "the responder's keys are gone");
    assert_eq!(f.count("pending_purges WHERE issuer_id = $1").await, 0);
    f.cleanup().await;
}

/// Releasing a hold deletes the keys a responder wrote while the certificate was on hold.
#[tokio::test(flavor = "multi_thread")]
async fn unrevoke_only_from_certificate_hold() {
    let f = Fixture::new("unrevoke").await;
    f.admin(
        &["import", "--issuer", &f.name, "-"],
        Some("5e01,2030-01-01T00:00:00Z\n5e02,2030-01-01T00:00:00Z\n5e03,2030-01-01T00:00:00Z\n"),
    )
    .ok();
    f.revoke("5e01", "certificateHold").ok();
    f.revoke("5e02", "keyCompromise").ok();
    let held = off_runtime(|| f.responder_writes(&["5e01"]));
    let other = off_runtime(|| f.responder_writes(&["5e02"]));

    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e01"], None).ok();
    assert_eq!(f.state("5e01").await, Some((None, false, true)));
    let left = off_runtime(|| f.site.redis_keys());
    assert!(left.is_disjoint(&keys_of(&held)), "keys of the released hold left: {left:?}");
    assert_eq!(left, keys_of(&other));

    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e02"], None).fails(2, &["5e02", "keyCompromise"]);
    assert_eq!(f.state("5e02").await, Some((Some(1), true, true)));
    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5e03"], None).fails(2, &["5e03", "not revoked"]);
    f.admin(&["unrevoke", "--issuer", &f.name, "--serial", "5eff"], None).fails(2, &["5eff"]);

    let row = db()
        .await
        .query_one(
            "SELECT before->>'reason', after->>'status' FROM audit_log WHERE issuer_id = $1 AND action = 'unrevoke'",
            &[&f.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("certificateHold"));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("good"));
    // Revocable again after the hold was released.
    f.revoke("5e01", "superseded").ok();
    assert_eq!(f.state("5e01").await, Some((Some(4), true, true)));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lists_the_changes() {
    let f = Fixture::new("audit").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("6f01,2030-01-01T00:00:00Z\n")).ok();
    f.revoke("6f01", "privilegeWithdrawn").ok();
    let out = f.admin(&["audit", "--limit", "1000"], None).ok();
    let mine: Vec<&str> = out.stdout.lines().filter(|l| l.contains(&f.name)).collect();
    assert_eq!(mine.len(), 3, "{}", out.stdout);
    assert!(mine[0].contains("issuer add") && mine[0].contains("admin-cli-test"), "{}", mine[0]);
    assert!(mine[1].contains("import"), "{}", mine[1]);
    assert!(
        mine[2].contains("revoke") && mine[2].contains("serial=6f01") && mine[2].contains("privilegeWithdrawn"),
        "{}",
        mine[2]
    );
    f.admin(&["audit", "--limit", "0"], None).fails(2, &["--limit"]);
    f.cleanup().await;
}
