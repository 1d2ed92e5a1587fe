//! Secrets never appear in what jitocsp prints (issue 13, "secrets at rest"): the real binary
//! runs with real secrets (a Postgres role's password, a Redis ACL user's password, the
//! signer's key file, a PKCS#11 PIN file, a TLS client key), read from owner-only files, at
//! trace log level (so the configuration's Debug output is printed too), through its success
//! paths and its failure paths (wrong passwords, a wrong PIN, refused files, conflicting
//! settings). Everything it printed, stdout and stderr of `serve` and of `admin`, and the
//! bodies of `/metrics` and `/readyz`, is searched for every secret, and also for the
//! non-secret parts (user names, file paths, the masked URL) that show the search looked at
//! the right text.

mod common;

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Trace level for jitocsp and every crate it uses, whichever of the two settings wins.
const TRACE: [(&str, &str); 2] = [("RUST_LOG", "trace"), ("JITOCSP_LOG_LEVEL", "trace")];

/// One secret and the forms in which a leak of it would show.
struct Secret {
    what: String,
    forms: Vec<String>,
}

impl Secret {
    /// A password or a PIN: the value itself (random hex, so percent-encoding leaves it as is).
    fn text(what: &str, value: &str) -> Secret {
        Secret { what: what.to_owned(), forms: vec![value.to_owned()] }
    }

    /// An EC private key file (PEM): every base64 line of its body, and its private scalar as
    /// hex (plain or colon-separated, as openssl prints it) or as a Rust byte-slice Debug would
    /// print it. (Not the whole DER: its public key is no secret, and may well be printed.)
    fn key_file(what: &str, path: &Path) -> Secret {
        let pem = std::fs::read_to_string(path).unwrap();
        let mut forms: Vec<String> =
            pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_owned).collect();
        assert!(!forms.is_empty(), "{}: no PEM body", path.display());
        let scalar = private_scalar(path);
        let hex = |bytes: &[u8], sep: &str| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(sep);
        for half in scalar.chunks(16) {
            forms.push(hex(half, ""));
            forms.push(hex(half, "").to_uppercase());
            forms.push(hex(half, ":"));
            forms.push(half.iter().map(u8::to_string).collect::<Vec<_>>().join(", "));
        }
        Secret { what: what.to_owned(), forms }
    }
}

/// The private scalar of an EC key file, as `openssl pkey -text` prints it.
fn private_scalar(path: &Path) -> Vec<u8> {
    let output = Command::new("openssl").args(["pkey", "-noout", "-text", "-in"]).arg(path).output().expect("openssl");
    assert!(output.status.success(), "openssl pkey: {}", output_text(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text.find("priv:").expect("an EC private key") + "priv:".len();
    let end = text[start..].find("pub:").map_or(text.len(), |e| start + e);
    let scalar: Vec<u8> = text[start..end]
        .split(|c: char| c == ':' || c.is_whitespace())
        .filter(|h| !h.is_empty())
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect();
    assert!(scalar.len() >= 28, "{}: a private scalar of {} bytes", path.display(), scalar.len());
    scalar
}

/// Everything the processes under test printed, each piece named by what produced it.
#[derive(Default)]
struct Printed(Vec<(String, String)>);

impl Printed {
    fn add(&mut self, what: &str, text: String) -> String {
        self.0.push((what.to_owned(), text.clone()));
        text
    }

    /// Records a finished process's stdout and stderr; returns them with its exit status.
    fn output(&mut self, what: &str, output: Output) -> (bool, String) {
        (output.status.success(), self.add(what, output_text(&output)))
    }

    /// Records a running server's `/metrics` and `/readyz` bodies.
    fn endpoints(&mut self, what: &str, server: &Server) -> (u16, String) {
        self.add(&format!("{what}: /metrics"), metrics_endpoint(server, "/metrics").1);
        let (status, ready) = metrics_endpoint(server, "/readyz");
        (status, self.add(&format!("{what}: /readyz"), ready))
    }

    /// Stops the server and records everything it printed.
    fn server_log(&mut self, what: &str, server: Server) -> String {
        let log = server.log.clone();
        server.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        self.add(&format!("{what}: stdout and stderr"), text)
    }

    /// Panics, naming the piece, the secret and the form, when any secret shows anywhere.
    fn assert_no_secret(&self, secrets: &[Secret]) {
        for (what, text) in &self.0 {
            for secret in secrets {
                if let Some(form) = secret.forms.iter().find(|form| text.contains(form.as_str())) {
                    let lines: Vec<&str> = text.lines().filter(|l| l.contains(form.as_str())).collect();
                    panic!("{} ({form:?}) appears in {what}:\n{}", secret.what, lines.join("\n"));
                }
            }
        }
    }

    /// The sanity side: `needle` does appear in some piece whose name contains `piece`.
    fn assert_shown(&self, piece: &str, needle: &str) {
        assert!(
            self.0.iter().any(|(what, text)| what.contains(piece) && text.contains(needle)),
            "{needle:?} appears in no piece named {piece:?}; pieces: {:?}",
            self.0.iter().map(|(what, _)| what).collect::<Vec<_>>()
        );
    }
}

/// 16 random bytes as hex: a password nothing else prints by chance.
fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `dir/name` with `mode`; its path.
fn file_with_mode(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    // The process umask may have taken bits off `mode`.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    file_with_mode(dir, name, contents, 0o600)
}

/// `url` with `user` and no password.
fn as_user(url: &str, user: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_username(user).unwrap();
    url.set_password(None).unwrap();
    url.to_string()
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A Postgres login role of this test, member of `group` (a role of deploy/postgres/roles.sql,
/// so it has exactly the grants that file gives); dropped with the guard.
struct PgRole {
    name: String,
    owner_url: String,
}

impl PgRole {
    fn create(site: &Site, group: &str, password: &str) -> PgRole {
        let name = unique("jitocsp_secret").replace('-', "_");
        site.sql(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {group}"));
        PgRole { name, owner_url: site.database_url.clone() }
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", &self.owner_url, "-c"])
            .arg(format!("DROP ROLE {}", self.name))
            .output();
    }
}

/// A Redis ACL user of this test, with the jitocsp user's rights of deploy/redis/redis.conf on
/// this site's keys only (and SELECT, for the test's DB number); deleted with the guard.
struct RedisUser {
    name: String,
    redis_url: String,
}

impl RedisUser {
    fn create(site: &Site, password: &str) -> RedisUser {
        let name = unique("jitocsp-secret");
        let user = RedisUser { name, redis_url: site.redis_url.clone() };
        let keys = format!("~{}:*", site.key_prefix);
        let rules = ["on", &format!(">{password}"), "resetkeys", &keys, "resetchannels", "-@all"];
        let commands = ["+get", "+set", "+del", "+pttl", "+ping", "+select"];
        user.acl(|cmd| {
            cmd.arg("SETUSER").arg(&user.name).arg(&rules[..]).arg(&commands[..]);
        });
        user
    }

    fn acl(&self, args: impl FnOnce(&mut redis::Cmd)) {
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        let mut connection = client.get_connection().expect("connect to Redis");
        let mut cmd = redis::cmd("ACL");
        args(&mut cmd);
        cmd.query::<()>(&mut connection).expect("ACL");
    }
}

impl Drop for RedisUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        self.acl(|cmd| {
            cmd.arg("DELUSER").arg(&name);
        });
    }
}

/// `jitocsp serve` on `site` with `env` until it exits by itself (a start-up failure).
fn serve_until_it_fails(printed: &mut Printed, what: &str, site: &Site, env: &[(&str, &str)]) -> String {
    let output = site.jitocsp(&["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], env);
    let (ok, text) = printed.output(what, output);
    assert!(!ok, "{what}: serve started:\n{text}");
    text
}

/// Postgres and Redis passwords from password files, right and wrong, and the signer's key
/// file, through the admin CLI and the responder.
#[test]
fn passwords_and_the_signer_key_never_appear_in_output() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let site = Site::with_own_database();
    let roles = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/roles.sql");
    let applied = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &site.database_url, "-f"])
        .arg(&roles)
        .output()
        .unwrap();
    assert!(applied.status.success(), "roles.sql: {}", output_text(&applied));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let admin_password = random_secret();
    let responder_password = random_secret();
    let redis_password = random_secret();
    let wrong_pg_password = random_secret();
    let wrong_redis_password = random_secret();
    let admin_role = PgRole::create(&site, "jitocsp_admin", &admin_password);
    let responder_role = PgRole::create(&site, "jitocsp_responder", &responder_password);
    let redis_user = RedisUser::create(&site, &redis_password);
    let admin_password_file = secret_file(d, "admin.password", &format!("{admin_password}\n"));
    let responder_password_file = secret_file(d, "responder.password", &format!("{responder_password}\n"));
    let redis_password_file = secret_file(d, "redis.password", &format!("{redis_password}\n"));
    let wrong_pg_file = secret_file(d, "wrong-pg.password", &wrong_pg_password);
    let wrong_redis_file = secret_file(d, "wrong-redis.password", &wrong_redis_password);

    let pki = Pki::new();
    let key = pki.file("ca.key");
    let other = pki_with_ca(P256);
    let secrets = [
        Secret::text("the admin role's password", &admin_password),
        Secret::text("the responder role's password", &responder_password),
        Secret::text("the Redis user's password", &redis_password),
        Secret::text("a wrong Postgres password", &wrong_pg_password),
        Secret::text("a wrong Redis password", &wrong_redis_password),
        Secret::key_file("the signer's key", &key),
        Secret::key_file("another CA's key", &other.file("ca.key")),
    ];

    let redis_url = as_user(&site.redis_url, &redis_user.name);
    let connections = |role: &PgRole, pg_file: &Path, redis_file: &Path| {
        let mut env = owned(&TRACE);
        env.extend(owned(&[
            ("JITOCSP_DATABASE_URL", &as_user(&site.database_url, &role.name)),
            ("JITOCSP_DATABASE_PASSWORD_FILE", pg_file.to_str().unwrap()),
            ("JITOCSP_REDIS_URL", &redis_url),
            ("JITOCSP_REDIS_PASSWORD_FILE", redis_file.to_str().unwrap()),
        ]));
        env
    };
    let admin_env = connections(&admin_role, &admin_password_file, &redis_password_file);
    let admin_env = pairs(&admin_env);
    let mut printed = Printed::default();
    let mut admin = |what: &str, args: &[&str], env: &[(&str, &str)]| printed.output(what, site.jitocsp(args, env));

    // The admin CLI, every command succeeding.
    let issuer = unique("issuer");
    let ca = pki.file("ca.pem");
    let signer = format!("file:{}", key.display());
    let add = ["admin", "issuer", "add", "--name", &issuer, "--cert", ca.to_str().unwrap(), "--signer", &signer];
    let (ok, text) = admin("admin issuer add", &add, &admin_env);
    assert!(ok, "{text}");
    let good = pki.leaf("good", "5ec1");
    let revoked = pki.leaf("revoked", "5ec2");
    let import = ["admin", "import", "--issuer", &issuer, good.to_str().unwrap(), revoked.to_str().unwrap()];
    let revoke = ["admin", "revoke", "--issuer", &issuer, "--serial", "5ec2", "--reason", "keyCompromise"];
    let status = ["admin", "status", "--issuer", &issuer, "--serial", "5ec2"];
    let purge = ["admin", "purge", "--issuer", &issuer, "--serial", "5ec2"];
    for (what, args) in [
        ("admin import", &import[..]),
        ("admin revoke", &revoke[..]),
        ("admin status", &status[..]),
        ("admin purge", &purge[..]),
        ("admin issuer list", &["admin", "issuer", "list"][..]),
        ("admin audit", &["admin", "audit"][..]),
    ] {
        let (ok, text) = admin(what, args, &admin_env);
        assert!(ok, "{what}: {text}");
        assert!(!text.contains("unreachable") && !text.contains("NOPERM"), "{what}: {text}");
    }

    // The admin CLI failing: wrong passwords, refused files, conflicting settings.
    let wrong_pg = connections(&admin_role, &wrong_pg_file, &redis_password_file);
    let (ok, text) =
        admin("admin issuer list, wrong Postgres password", &["admin", "issuer", "list"], &pairs(&wrong_pg));
    assert!(!ok && text.contains("password authentication failed"), "{text}");
    let (ok, text) = admin("migrate, wrong Postgres password", &["migrate"], &pairs(&wrong_pg));
    assert!(!ok && text.contains("password authentication failed"), "{text}");
    let wrong_redis = connections(&admin_role, &admin_password_file, &wrong_redis_file);
    let (ok, text) = admin("admin status, wrong Redis password", &status, &pairs(&wrong_redis));
    assert!(ok && text.contains("Redis unreachable"), "{text}");
    let (ok, text) = admin("admin purge, wrong Redis password", &purge, &pairs(&wrong_redis));
    assert!(!ok, "{text}");
    let open_file = file_with_mode(d, "open.password", &admin_password, 0o644);
    let open = connections(&admin_role, &open_file, &redis_password_file);
    let (ok, text) =
        admin("admin issuer list, password file readable by others", &["admin", "issuer", "list"], &pairs(&open));
    assert!(!ok && text.contains("0644"), "{text}");
    let mut both = connections(&admin_role, &admin_password_file, &redis_password_file);
    let with_password = |url: &str, password: &str| {
        let mut url = url::Url::parse(url).unwrap();
        url.set_password(Some(password)).unwrap();
        url.to_string()
    };
    both[2].1 = with_password(&both[2].1, &admin_password);
    let (ok, text) =
        admin("admin issuer list, database.url and password_file", &["admin", "issuer", "list"], &pairs(&both));
    assert!(!ok && text.contains("already contains a password"), "{text}");
    let mut both = connections(&admin_role, &admin_password_file, &redis_password_file);
    both[4].1 = with_password(&both[4].1, &redis_password);
    let (ok, text) =
        admin("admin issuer list, redis.url and password_file", &["admin", "issuer", "list"], &pairs(&both));
    assert!(!ok && text.contains("already contains a password"), "{text}");
    let open_key = d.join("open-signer.key");
    std::fs::copy(&key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (what, signer_key) in [
        ("admin issuer add, key file readable by others", &open_key),
        ("admin issuer add, key of another CA", &other.file("ca.key")),
    ] {
        let name = unique("issuer");
        let signer = format!("file:{}", signer_key.display());
        let add = ["admin", "issuer", "add", "--name", &name, "--cert", ca.to_str().unwrap(), "--signer", &signer];
        let (ok, text) = admin(what, &add, &admin_env);
        assert!(!ok, "{what}: {text}");
    }

    // The responder: serving, then with a wrong Redis password (it serves, unready), then
    // with a wrong Postgres password (it does not start).
    let responder_env = connections(&responder_role, &responder_password_file, &redis_password_file);
    let server = site.serve(&pairs(&responder_env));
    for (cert, status) in [(&good, ": good"), (&revoked, ": revoked")] {
        let response = server.post(&pki.request(cert, "-sha256"));
        assert_eq!(response.status, 200);
        let checked = openssl_check_response(&pki, &response.body, cert, "-sha256");
        assert!(checked.contains("Response verify OK") && checked.contains(status), "{checked}");
    }
    let (ready, text) = printed.endpoints("serve", &server);
    assert_eq!(ready, 200, "{text}");
    printed.server_log("serve", server);

    let wrong_redis = connections(&responder_role, &responder_password_file, &wrong_redis_file);
    let server = site.serve(&pairs(&wrong_redis));
    let response = server.post(&pki.request(&good, "-sha256"));
    assert_eq!(response.status, 200);
    let (ready, text) = printed.endpoints("serve, wrong Redis password", &server);
    assert_eq!(ready, 503, "{text}");
    printed.server_log("serve, wrong Redis password", server);

    let wrong_pg = connections(&responder_role, &wrong_pg_file, &redis_password_file);
    let text = serve_until_it_fails(&mut printed, "serve, wrong Postgres password", &site, &pairs(&wrong_pg));
    assert!(text.contains("password authentication failed"), "{text}");

    printed.assert_no_secret(&secrets);
    // What was searched is what was meant: the trace-level configuration (user names, masked
    // URLs and password file paths), the failures naming the role and the refused files.
    let redis_shown = format!("{}:***@", redis_user.name);
    printed.assert_shown("serve: stdout and stderr", &redis_shown);
    printed.assert_shown("serve: stdout and stderr", responder_password_file.to_str().unwrap());
    printed.assert_shown("serve: stdout and stderr", &responder_role.name);
    printed.assert_shown("admin revoke", &redis_shown);
    printed.assert_shown("wrong Postgres password", &admin_role.name);
    printed.assert_shown("wrong Postgres password", &responder_role.name);
    printed.assert_shown("password file readable by others", open_file.to_str().unwrap());
    printed.assert_shown("database.url and password_file", "***");
    printed.assert_shown("redis.url and password_file", "***");
    printed.assert_shown("key file readable by others", open_key.to_str().unwrap());
    printed.assert_shown("serve, wrong Redis password: /readyz", "redis");
    printed.assert_shown("serve: /metrics", "jitocsp_");
}

/// A PKCS#11 user PIN from a PIN file, right and then wrong.
#[test]
fn a_pin_never_appears_in_output() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    let pin = random_secret();
    let wrong_pin = random_secret();
    let hsm = SoftHsm::with_pin(&pin);
    let pki = Pki::new();
    hsm.import("issuer", "5e", &pki.file("ca.key"));
    let pin_file = secret_file(hsm.dir.path(), "user.pin", &format!("{pin}\n"));
    let uri = hsm
        .uri("issuer", Some("5e"))
        .replace(&format!("pin-source=env:{}", SoftHsm::PIN_VAR), &format!("pin-source=file:{}", pin_file.display()));
    let conf = hsm.conf.to_str().unwrap();
    let mut env = TRACE.to_vec();
    env.push(("SOFTHSM2_CONF", conf));
    // A database of its own: readiness is about this test's issuer alone.
    let site = Site::with_own_database();
    let mut printed = Printed::default();

    let issuer = unique("issuer");
    let ca = pki.file("ca.pem");
    let add = ["admin", "issuer", "add", "--name", &issuer, "--cert", ca.to_str().unwrap(), "--signer", &uri];
    let (ok, text) = printed.output("admin issuer add", site.jitocsp(&add, &env));
    assert!(ok, "{text}");
    let leaf = pki.leaf("leaf", "5e01");
    site.jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
    let server = site.serve(&env);
    let response = server.post(&pki.request(&leaf, "-sha256"));
    let checked = openssl_check_response(&pki, &response.body, &leaf, "-sha256");
    assert!(checked.contains("Response verify OK") && checked.contains(": good"), "{checked}");
    let (ready, text) = printed.endpoints("serve", &server);
    assert_eq!(ready, 200, "{text}");
    printed.server_log("serve", server);

    std::fs::remove_file(&pin_file).unwrap();
    secret_file(hsm.dir.path(), "user.pin", &format!("{wrong_pin}\n"));
    let name = unique("issuer");
    let add = ["admin", "issuer", "add", "--name", &name, "--cert", ca.to_str().unwrap(), "--signer", &uri];
    let (ok, text) = printed.output("admin issuer add, wrong PIN", site.jitocsp(&add, &env));
    assert!(!ok, "{text}");
    let server = site.serve(&env);
    let (ready, text) = printed.endpoints("serve, wrong PIN", &server);
    assert_eq!(ready, 503, "{text}");
    printed.server_log("serve, wrong PIN", server);

    printed.assert_no_secret(&[Secret::text("the PIN", &pin), Secret::text("a wrong PIN", &wrong_pin)]);
    printed.assert_shown("serve, wrong PIN: /readyz", "CKR_PIN_INCORRECT");
    printed.assert_shown("serve, wrong PIN: /readyz", pin_file.to_str().unwrap());
    printed.assert_shown("admin issuer add, wrong PIN", "CKR_PIN_INCORRECT");
}

/// TLS client keys for Postgres and Redis: used, refused when readable by others, and not
/// matching their certificate.
#[test]
fn a_tls_client_key_never_appears_in_output() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::TlsServices]) {
        return;
    }
    let tls = tls_services();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls.client(dir.path(), "client");
    let (_, other_key) = tls.client(dir.path(), "other");
    let site = Site::with_own_database();
    let with_identity = |cert: &Path, key: &Path| {
        let mut env = tls.env(&site, &tls.ca());
        env.extend(owned(&TRACE));
        for section in ["DATABASE", "REDIS"] {
            env.push((format!("JITOCSP_{section}_TLS_CERT_FILE"), cert.display().to_string()));
            env.push((format!("JITOCSP_{section}_TLS_KEY_FILE"), key.display().to_string()));
        }
        env
    };
    let env = with_identity(&cert, &key);
    let env = pairs(&env);
    let mut printed = Printed::default();

    let pki = Pki::new();
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &env);
    let leaf = pki.leaf("leaf", "7e01");
    site.jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &env);
    let status = ["admin", "status", "--issuer", &issuer, "--serial", "7e01"];
    let (ok, text) = printed.output("admin status", site.jitocsp(&status, &env));
    assert!(ok && !text.contains("unreachable"), "{text}");
    let server = site.serve(&env);
    let response = server.post(&pki.request(&leaf, "-sha256"));
    assert_eq!(response.status, 200);
    let (ready, text) = printed.endpoints("serve", &server);
    assert_eq!(ready, 200, "{text}");
    printed.server_log("serve", server);

    let mismatched = with_identity(&cert, &other_key);
    let (ok, text) = printed.output(
        "admin issuer list, key of another certificate",
        site.jitocsp(&["admin", "issuer", "list"], &pairs(&mismatched)),
    );
    assert!(!ok, "{text}");
    serve_until_it_fails(&mut printed, "serve, key of another certificate", &site, &pairs(&mismatched));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) =
        printed.output("admin issuer list, key readable by others", site.jitocsp(&["admin", "issuer", "list"], &env));
    assert!(!ok, "{text}");
    serve_until_it_fails(&mut printed, "serve, key readable by others", &site, &env);

    printed.assert_no_secret(&[
        Secret::key_file("the TLS client key", &key),
        Secret::key_file("another TLS client key", &other_key),
    ]);
    printed.assert_shown("serve: stdout and stderr", key.to_str().unwrap());
    printed.assert_shown("key readable by others", key.to_str().unwrap());
    printed.assert_shown("key of another certificate", other_key.to_str().unwrap());
}
