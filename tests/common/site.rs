//! The deployment under test: the services' URLs, a [`Site`] (one configuration file that
//! `jitocsp serve` and `jitocsp admin` both read), and `jitocsp` run as a child process.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{block_on, service_url, unique, Pki, Server, BIN};

/// `DATABASE_URL`, or when unset the one in `.local/env` (which `scripts/services.sh up` writes).
pub fn database_url() -> String {
    service_url("DATABASE_URL").unwrap_or_else(|e| panic!("{e}: run scripts/services.sh up"))
}

/// `REDIS_URL`, or when unset the one in `.local/env`.
pub fn redis_url() -> String {
    service_url("REDIS_URL").unwrap_or_else(|e| panic!("{e}: run scripts/services.sh up"))
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

/// Adds the PKI's CA as a new issuer signed by `signer` (and a delegated responder
/// certificate, if given), with `env` (SOFTHSM2_CONF, the PIN variable); returns its name.
pub fn add_issuer_with(pki: &Pki, signer: &str, responder_cert: Option<&Path>, env: &[(&str, &str)]) -> String {
    site().add_issuer_with(pki, signer, responder_cert, env)
}
