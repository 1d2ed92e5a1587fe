use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::cache::redis::RedisMode;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A file only its owner may read, as a password file must be.
fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = write(dir, name, text);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "jitocsp.toml", text);
    Config::load_inner(Some(&path), env(vars))
}

fn err_text(text: &str, vars: &[(&str, &str)]) -> String {
    load_text(text, vars).expect_err("expected an error").to_string()
}

#[test]
fn defaults() {
    let c = Config::load_inner(None, env(&[])).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.metrics_listen, "127.0.0.1:9090");
    assert_eq!(c.server.path_prefix, "");
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.database.url, "postgres://jitocsp@127.0.0.1:5432/jitocsp");
    assert_eq!(c.database.read_url, "");
    assert_eq!(c.database.read_url(), "postgres://jitocsp@127.0.0.1:5432/jitocsp");
    assert_eq!(c.database.pool_size, 16);
    assert_eq!(c.database.read_concurrency, 4);
    assert_eq!(c.database.connect_timeout_ms, 2000);
    assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
    assert_eq!(c.redis.mode, RedisMode::Single);
    assert!(c.redis.nodes.is_empty());
    assert_eq!(c.redis.timeout_ms, 100);
    assert_eq!(c.cache.local_entries, 0);
    assert_eq!(c.cache.key_prefix, "ocsp");
    assert_eq!(c.responses.validity, Duration::from_secs(96 * 3600));
    assert_eq!(c.responses.refresh_after, Duration::from_secs(48 * 3600));
    assert_eq!(c.responses.max_age_cap, None);
    assert_eq!(c.responses.unissued, UnissuedPolicy::Unauthorized);
    assert_eq!(c.responses.expired_grace, Duration::ZERO);
    assert_eq!(c.responses.nonce, NoncePolicy::Ignore);
    assert_eq!(c.responses.max_remembered_changes, 2_000_000);
    assert_eq!(c.signing.max_in_flight, 64);
    assert_eq!(c.signing.max_waiting, 1024);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.request_sample, 0.0);
    assert_eq!(c.cdn.base_url, "");
    assert!(!c.cdn.enabled());
    assert_eq!(c.cdn.purge_timeout, Duration::from_secs(10));
    assert_eq!((c.cdn.max_batch, c.cdn.max_calls_per_second), (100, 5.0));
    // Default::default() is the same thing.
    assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
}

#[test]
fn explicit_path_must_exist() {
    let e = Config::load_from(Some(Path::new("/nonexistent/jitocsp.toml")), env(&[]), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/jitocsp.toml"), "{e}");
}

#[test]
fn example_file_is_complete_and_gives_the_defaults() {
    let text = include_str!("../../deploy/jitocsp.toml.example");
    let c = load_text(text, &[]).unwrap();
    assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    let table: toml::Table = text.parse().unwrap();
    for (section, keys) in schema() {
        let t = table.get(&section).and_then(|v| v.as_table()).unwrap_or_else(|| panic!("[{section}] missing"));
        for key in keys.as_table().unwrap().keys() {
            assert!(t.contains_key(key), "{section}.{key} missing from deploy/jitocsp.toml.example");
        }
    }
}

#[test]
fn full_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let c = load_text(
        r#"
        [server]
        listen = "0.0.0.0:80"
        metrics_listen = "[::1]:9100"
        path_prefix = "/ocsp"
        workers = 4
        [database]
        url = "postgres://responder@db1:5432/ca"
        read_url = "postgresql://responder@db2:5432/ca"
        password_file = ""
        pool_size = 32
        read_concurrency = 8
        connect_timeout_ms = 500
        [redis]
        url = "rediss://jitocsp@cache:6380"
        mode = "cluster"
        nodes = ["a:1", "redis://b:2"]
        password_file = ""
        timeout_ms = 250
        [cache]
        local_entries = 10000
        key_prefix = "ocsp-e1"
        [responses]
        validity = "72h"
        refresh_after = "1h30m"
        max_age_cap = "1h"
        unissued = "revoked"
        expired_grace = "30d"
        nonce = "echo"
        max_remembered_changes = 5000000
        [signing]
        max_in_flight = 8
        max_waiting = 0
        [log]
        format = "json"
        level = "jitocsp=debug,info"
        request_sample = 0.25
        [cdn]
        base_url = "http://ocsp.example.com/ocsp/"
        purge_command = "/usr/local/bin/purge \"$1\""
        purge_url = "http://purger:8000/purge"
        purge_timeout = "3s"
        max_batch = 30
        max_calls_per_second = 0.5
        "#,
        &[],
    )
    .unwrap();
    drop(dir);
    assert_eq!(c.server.listen, "0.0.0.0:80");
    assert_eq!(c.server.metrics_listen, "[::1]:9100");
    assert_eq!(c.server.path_prefix, "/ocsp");
    assert_eq!(c.server.workers, 4);
    assert_eq!(c.database.url, "postgres://responder@db1:5432/ca");
    assert_eq!(c.database.read_url(), "postgresql://responder@db2:5432/ca");
    assert_eq!(c.database.pool_size, 32);
    assert_eq!(c.database.read_concurrency, 8);
    assert_eq!(c.database.connect_timeout_ms, 500);
    assert_eq!(c.redis.url, "rediss://jitocsp@cache:6380");
    assert_eq!(c.redis.mode, RedisMode::Cluster);
    assert_eq!(c.redis.nodes, vec!["rediss://jitocsp@a:1".to_string(), "redis://b:2".to_string()]);
    assert_eq!(c.redis.timeout_ms, 250);
    assert_eq!(c.cache.local_entries, 10000);
    assert_eq!(c.cache.key_prefix, "ocsp-e1");
    assert_eq!(c.responses.validity, Duration::from_secs(72 * 3600));
    assert_eq!(c.responses.refresh_after, Duration::from_secs(90 * 60));
    assert_eq!(c.responses.max_age_cap, Some(Duration::from_secs(3600)));
    assert_eq!(c.responses.unissued, UnissuedPolicy::Revoked);
    assert_eq!(c.responses.expired_grace, Duration::from_secs(30 * 86400));
    assert_eq!(c.responses.nonce, NoncePolicy::Echo);
    assert_eq!(c.responses.max_remembered_changes, 5_000_000);
    assert_eq!(c.signing.max_in_flight, 8);
    assert_eq!(c.signing.max_waiting, 0);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "jitocsp=debug,info");
    assert_eq!(c.log.request_sample, 0.25);
    assert_eq!(c.cdn.base_url, "http://ocsp.example.com/ocsp");
    assert_eq!(c.cdn.purge_command, "/usr/local/bin/purge \"$1\"");
    assert_eq!(c.cdn.purge_url, "http://purger:8000/purge");
    assert_eq!(c.cdn.purge_timeout, Duration::from_secs(3));
    assert_eq!((c.cdn.max_batch, c.cdn.max_calls_per_second), (30, 0.5));
    assert!(c.cdn.enabled());
}

#[test]
fn log_sample_and_cdn_validated() {
    assert_eq!(load_text("", &[("JITOCSP_LOG_REQUEST_SAMPLE", "1")]).unwrap().log.request_sample, 1.0);
    assert_eq!(load_text("[log]\nrequest_sample = 1\n", &[]).unwrap().log.request_sample, 1.0);
    let e = err_text("[log]\nrequest_sample = 1.5\n", &[]);
    assert!(e.contains("log.request_sample") && e.contains("between 0.0 and 1.0"), "{e}");
    let e = err_text("", &[("JITOCSP_LOG_REQUEST_SAMPLE", "half")]);
    assert!(e.contains("JITOCSP_LOG_REQUEST_SAMPLE") && e.contains("not a number"), "{e}");
    let e = err_text("[cdn]\nbase_url = \"ocsp.example.com\"\n", &[]);
    assert!(e.contains("cdn.base_url"), "{e}");
    let e = err_text("[cdn]\npurge_url = \"https://api.cdn.example/purge\"\n", &[]);
    assert!(e.contains("cdn.purge_url") && e.contains("purge_command"), "{e}");
    let e = err_text("[cdn]\npurge_timeout = \"0s\"\n", &[]);
    assert!(e.contains("cdn.purge_timeout"), "{e}");
    for bad in ["max_batch = 0", "max_batch = 1001", "max_calls_per_second = 0", "max_calls_per_second = 2000"] {
        let e = err_text(&format!("[cdn]\n{bad}\n"), &[]);
        let key = bad.split(' ').next().unwrap_or_default();
        assert!(e.contains(&format!("cdn.{key}")) && e.contains("between"), "{e}");
    }
    let c = load_text("", &[("JITOCSP_CDN_MAX_CALLS_PER_SECOND", "50"), ("JITOCSP_CDN_MAX_BATCH", "256")]).unwrap();
    assert_eq!((c.cdn.max_batch, c.cdn.max_calls_per_second), (256, 50.0));
    let c = load_text("", &[("JITOCSP_CDN_PURGE_URL", "http://u:secret@purger/p")]).unwrap();
    assert!(!format!("{c:?}").contains("secret"));
}

#[test]
fn unknown_key_in_file_is_named() {
    let e = err_text("[server]\nlisten = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n", &[]);
    assert!(e.contains("unknown key `listen_addr`"), "{e}");
    assert!(e.contains("[server]"), "{e}");
    assert!(e.contains("jitocsp.toml"), "{e}");
    let e = err_text("[servr]\nlisten = \"x\"\n", &[]);
    assert!(e.contains("unknown section [servr]"), "{e}");
    let e = err_text("server = 1\n", &[]);
    assert!(e.contains("`server` must be a section"), "{e}");
}

#[test]
fn syntax_error_has_location_but_no_line_text() {
    let e = err_text("[database]\nurl = \"postgres://u:hunter2@h/db\n", &[]);
    assert!(e.contains("invalid TOML at line 2"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn unknown_env_key_is_named_and_other_vars_ignored() {
    let e = Config::load_inner(None, env(&[("JITOCSP_SERVER_FOO", "1")])).unwrap_err().to_string();
    assert!(e.contains("JITOCSP_SERVER_FOO"), "{e}");
    assert!(e.contains("`foo`"), "{e}");
    // Not a section of ours: ignored.
    Config::load_inner(
        None,
        env(&[
            ("JITOCSP_PKCS11_PIN", "1234"),
            ("JITOCSP_TEST_DATABASE_URL", "x"),
            ("JITOCSP_CONFIG", "/x"),
            ("JITOCSP_LOG", "x"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
}

#[test]
fn env_overrides_file() {
    let c = load_text(
        "[server]\nlisten = \"127.0.0.1:1000\"\n[responses]\nvalidity = \"96h\"\n[cache]\nlocal_entries = 5\n",
        &[
            ("JITOCSP_SERVER_LISTEN", "127.0.0.1:2000"),
            ("JITOCSP_SERVER_METRICS_LISTEN", "127.0.0.1:2001"),
            ("JITOCSP_RESPONSES_VALIDITY", "72h"),
            ("JITOCSP_RESPONSES_MAX_AGE_CAP", "2h"),
            ("JITOCSP_REDIS_NODES", "a:1, b:2,"),
            ("JITOCSP_REDIS_MODE", "cluster"),
            ("JITOCSP_CACHE_LOCAL_ENTRIES", "1000"),
            ("JITOCSP_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:2000");
    assert_eq!(c.server.metrics_listen, "127.0.0.1:2001");
    assert_eq!(c.responses.validity, Duration::from_secs(72 * 3600));
    assert_eq!(c.responses.max_age_cap, Some(Duration::from_secs(7200)));
    assert_eq!(c.redis.nodes, vec!["redis://a:1".to_string(), "redis://b:2".to_string()]);
    assert_eq!(c.redis.mode, RedisMode::Cluster);
    assert_eq!(c.cache.local_entries, 1000);
    assert_eq!(c.log.format, LogFormat::Json);

    let e = err_text("", &[("JITOCSP_DATABASE_POOL_SIZE", "lots")]);
    assert!(e.contains("JITOCSP_DATABASE_POOL_SIZE") && e.contains("database.pool_size"), "{e}");
    // An empty JITOCSP_ value means "no cap" for max_age_cap.
    let c = load_text("[responses]\nmax_age_cap = \"1h\"\n", &[("JITOCSP_RESPONSES_MAX_AGE_CAP", "")]).unwrap();
    assert_eq!(c.responses.max_age_cap, None);
}

#[test]
fn database_url_and_redis_url_honoured_and_specific_vars_win() {
    let file = "[database]\nurl = \"postgres://file@h/db\"\n[redis]\nurl = \"redis://file:6379\"\n";
    let c =
        load_text(file, &[("DATABASE_URL", "postgres://generic@h/db"), ("REDIS_URL", "redis://generic:6379")]).unwrap();
    assert_eq!(c.database.url, "postgres://generic@h/db");
    assert_eq!(c.redis.url, "redis://generic:6379");
    // The JITOCSP_ variable wins whatever the order.
    for vars in [
        [("JITOCSP_DATABASE_URL", "postgres://specific@h/db"), ("DATABASE_URL", "postgres://generic@h/db")],
        [("DATABASE_URL", "postgres://generic@h/db"), ("JITOCSP_DATABASE_URL", "postgres://specific@h/db")],
    ] {
        let c = load_text(file, &vars).unwrap();
        assert_eq!(c.database.url, "postgres://specific@h/db");
    }
    let c =
        load_text(file, &[("REDIS_URL", "redis://generic:1"), ("JITOCSP_REDIS_URL", "redis://specific:2")]).unwrap();
    assert_eq!(c.redis.url, "redis://specific:2");
    // An empty DATABASE_URL is ignored.
    let c = load_text(file, &[("DATABASE_URL", "")]).unwrap();
    assert_eq!(c.database.url, "postgres://file@h/db");
}

#[test]
fn validity_out_of_range_rejected() {
    for v in ["7h59m", "10days 1s", "0s"] {
        let e = err_text(&format!("[responses]\nvalidity = \"{v}\"\nrefresh_after = \"1h\"\n"), &[]);
        assert!(e.contains("responses.validity") && e.contains("BR 4.9.10"), "{e}");
    }
    load_text("[responses]\nvalidity = \"8h\"\nrefresh_after = \"3h 59m\"\n", &[]).unwrap();
    let e = err_text("[responses]\nvalidity = \"8h\"\nrefresh_after = \"4h\"\n", &[]);
    assert!(e.contains("half the interval"), "under 16 h: refreshed half the interval before nextUpdate: {e}");
    load_text("[responses]\nvalidity = \"239h 59m 59s\"\n", &[]).unwrap();
    let e = err_text("[responses]\nvalidity = \"10days\"\n", &[]);
    assert!(e.contains("responses.validity") && e.contains("BR 4.9.10"), "ten days counted inclusively is over: {e}");
    let e = err_text("[responses]\nvalidity = \"24h\"\nrefresh_after = \"17h\"\n", &[]);
    assert!(e.contains("responses.refresh_after") && e.contains("at most 16h"), "{e}");
    load_text("[responses]\nvalidity = \"24h\"\nrefresh_after = \"16h\"\n", &[]).unwrap();
    let e = err_text("[responses]\nvalidity = \"239h\"\nrefresh_after = \"97h\"\n", &[]);
    assert!(e.contains("at most 4days"), "four days after thisUpdate at the latest: {e}");
    let e = err_text("[responses]\nrefresh_after = \"0s\"\n", &[]);
    assert!(e.contains("responses.refresh_after"), "{e}");
    let e = err_text("[responses]\nmax_age_cap = \"0s\"\n", &[]);
    assert!(e.contains("responses.max_age_cap"), "{e}");
}

#[test]
fn bad_duration_named() {
    let e = err_text("[responses]\nvalidity = \"96 hours please\"\n", &[]);
    assert!(e.contains("responses.validity") && e.contains("jitocsp.toml"), "{e}");
    assert!(e.contains("96 hours please"), "{e}");
    let e = err_text("", &[("JITOCSP_RESPONSES_EXPIRED_GRACE", "3x")]);
    assert!(e.contains("responses.expired_grace") && e.contains("JITOCSP_RESPONSES_EXPIRED_GRACE"), "{e}");
    let e = err_text("[responses]\nvalidity = 96\n", &[]);
    assert!(e.contains("responses.validity") && e.contains("expected a string"), "{e}");
}

#[test]
fn other_validation() {
    for (text, key) in [
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        ("[server]\nmetrics_listen = \"127.0.0.1:8080\"\n", "server.metrics_listen"),
        ("[server]\npath_prefix = \"ocsp\"\n", "server.path_prefix"),
        ("[server]\npath_prefix = \"/ocsp/\"\n", "server.path_prefix"),
        ("[server]\nworkers = -1\n", "server.workers"),
        ("[database]\npool_size = 0\n", "database.pool_size"),
        ("[database]\nread_concurrency = 0\n", "database.read_concurrency"),
        ("[database]\nurl = \"mysql://x@y/z\"\n", "database.url"),
        ("[redis]\nurl = \"http://x\"\n", "redis.url"),
        ("[redis]\nmode = \"ring\"\n", "redis.mode"),
        ("[redis]\nnodes = [\"a/b\"]\n", "redis.nodes"),
        ("[cache]\nkey_prefix = \"\"\n", "cache.key_prefix"),
        ("[cache]\nkey_prefix = \"a{b}\"\n", "cache.key_prefix"),
        ("[cache]\nkey_prefix = \"a b\"\n", "cache.key_prefix"),
        ("[responses]\nunissued = \"good\"\n", "responses.unissued"),
        ("[responses]\nnonce = \"yes\"\n", "responses.nonce"),
        ("[signing]\nmax_in_flight = 0\n", "signing.max_in_flight"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
    ] {
        let e = err_text(text, &[]);
        assert!(e.contains(key), "{text}: {e}");
    }
    let c = load_text("[server]\npath_prefix = \"/a/b\"\n[cache]\nlocal_entries = 0\n", &[]).unwrap();
    assert_eq!(c.server.path_prefix, "/a/b");
    // A key=value connection string is accepted.
    load_text("[database]\nurl = \"host=/run/postgresql user=jitocsp dbname=jitocsp\"\n", &[]).unwrap();
}

#[test]
fn password_file_read() {
    let dir = tempfile::tempdir().unwrap();
    let db_pw = write_secret(dir.path(), "db", "s3cr3t/@:!\n");
    let redis_pw = write_secret(dir.path(), "redis", "  r-pass \n");
    let text = format!(
        "[database]\nurl = \"postgres://jitocsp@db:5432/jitocsp\"\nread_url = \"postgres://jitocsp@replica/jitocsp\"\npassword_file = \"{}\"\n\
         [redis]\nurl = \"redis://jitocsp@cache:6379\"\nnodes = [\"a:1\", \"redis://b:2\"]\npassword_file = \"{}\"\n",
        db_pw.display(),
        redis_pw.display()
    );
    let c = load_text(&text, &[]).unwrap();
    // The password goes into the `password` query parameter, which the driver reads.
    assert_eq!(c.database.url, "postgres://jitocsp@db:5432/jitocsp?password=s3cr3t%2F%40%3A%21");
    assert_eq!(c.database.read_url(), "postgres://jitocsp@replica/jitocsp?password=s3cr3t%2F%40%3A%21");
    for url in [&c.database.url, &c.database.read_url] {
        let parsed: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"s3cr3t/@:!"[..]), "{url}");
        assert_eq!(parsed.get_user(), Some("jitocsp"), "{url}");
    }
    assert_eq!(c.redis.url, "redis://jitocsp:r-pass@cache:6379");
    assert_eq!(c.redis.nodes, vec!["redis://jitocsp:r-pass@a:1".to_string(), "redis://:r-pass@b:2".to_string()]);

    // Via the environment too, and into a key=value string and a Unix-socket URL.
    let c = Config::load_inner(
        None,
        env(&[
            ("DATABASE_URL", "host=/run/postgresql user=jitocsp"),
            ("JITOCSP_DATABASE_PASSWORD_FILE", db_pw.to_str().unwrap()),
            ("REDIS_URL", "redis+unix:///run/redis.sock?db=1"),
            ("JITOCSP_REDIS_PASSWORD_FILE", redis_pw.to_str().unwrap()),
        ]),
    )
    .unwrap();
    assert_eq!(c.database.url, "host=/run/postgresql user=jitocsp password='s3cr3t/@:!'");
    assert_eq!(c.redis.url, "redis+unix:///run/redis.sock?db=1&pass=r-pass");

    // Missing file: named, with the key and where it was set.
    let e = load_text("[database]\npassword_file = \"/nonexistent/pw\"\n", &[]).unwrap_err().to_string();
    assert!(e.contains("database.password_file") && e.contains("/nonexistent/pw"), "{e}");
    // A URL that already has a password conflicts.
    let e = load_text(
        &format!("[database]\npassword_file = \"{}\"\n", db_pw.display()),
        &[("DATABASE_URL", "postgres://u:zebra9@h/db")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("already contains a password") && !e.contains("zebra9"), "{e}");
    // Empty file.
    let empty = write_secret(dir.path(), "empty", "\n");
    let e = load_text(&format!("[redis]\npassword_file = \"{}\"\n", empty.display()), &[]).unwrap_err();
    assert!(e.to_string().contains("redis.password_file"), "{e}");
    // A file that others may read: refused, naming the file and its mode, not the password.
    let open = write(dir.path(), "open", "s3cr3t-open\n");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = load_text(&format!("[database]\npassword_file = \"{}\"\n", open.display()), &[]).unwrap_err().to_string();
    assert!(e.contains("database.password_file") && e.contains(&open.display().to_string()), "{e}");
    assert!(e.contains("mode 0644") && !e.contains("s3cr3t-open"), "{e}");
}

#[test]
fn debug_does_not_leak_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "pw", "hunter2\n");
    let c = Config::load_inner(
        None,
        env(&[
            ("DATABASE_URL", "postgres://jitocsp:hunter2@db/jitocsp?sslmode=require"),
            ("JITOCSP_DATABASE_READ_URL", "host=replica password='hunter2 x' user=jitocsp"),
            ("JITOCSP_REDIS_PASSWORD_FILE", pw.to_str().unwrap()),
            ("JITOCSP_REDIS_NODES", "a:1,rediss://b:2"),
        ]),
    )
    .unwrap();
    let debug = format!("{c:?} {:#?}", c);
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("postgres://jitocsp:***@db/jitocsp?sslmode=require"), "{debug}");
    assert!(debug.contains("redis://:***@127.0.0.1:6379"), "{debug}");

    assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(redact_url("redis://u@h"), "redis://u@h");
    assert_eq!(redact_url("unix:///s?db=1&pass=x#f"), "unix:///s?db=1&pass=***#f");
    assert_eq!(redact_url("postgres://u:p@w@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact_url("host=h password=p user=u"), "host=h password=*** user=u");
    assert_eq!(redact_url("host=h password='unterminated"), "<unparseable, redacted>");

    // Nor do validation errors.
    let e = err_text("", &[("REDIS_URL", "http://u:hunter2@h")]);
    assert!(e.contains("redis.url") && e.contains("REDIS_URL") && !e.contains("hunter2"), "{e}");
}

#[test]
fn max_remembered_changes_is_bounded() {
    let c = load_text("", &[("JITOCSP_RESPONSES_MAX_REMEMBERED_CHANGES", "1000")]).unwrap();
    assert_eq!(c.responses.max_remembered_changes, 1000);
    for v in ["0", "999", "1000000001"] {
        let e = err_text(&format!("[responses]\nmax_remembered_changes = {v}\n"), &[]);
        assert!(e.contains("responses.max_remembered_changes") && e.contains("16 bytes"), "{e}");
    }
}

#[test]
fn tls_keys_parsed_and_checked() {
    let c = load_text(
        r#"
        [database]
        url = "postgres://jitocsp@db.example/jitocsp?sslmode=verify-full"
        tls_ca_file = "/etc/jitocsp/pg-ca.pem"
        tls_cert_file = "/etc/jitocsp/pg-client.pem"
        tls_key_file = "/run/credentials/jitocsp.service/pg-client.key"
        [redis]
        url = "rediss://cache.example:6380"
        tls_ca_file = "/etc/jitocsp/redis-ca.pem"
        "#,
        &[("JITOCSP_REDIS_TLS_CERT_FILE", "/etc/jitocsp/r.pem"), ("JITOCSP_REDIS_TLS_KEY_FILE", "/etc/jitocsp/r.key")],
    )
    .unwrap();
    let db = c.database.tls_files();
    assert_eq!(db.ca_file.as_deref(), Some(Path::new("/etc/jitocsp/pg-ca.pem")));
    assert_eq!(db.cert_file.as_deref(), Some(Path::new("/etc/jitocsp/pg-client.pem")));
    assert_eq!(db.key_file.as_deref(), Some(Path::new("/run/credentials/jitocsp.service/pg-client.key")));
    let redis = c.redis.tls_files();
    assert_eq!(redis.ca_file.as_deref(), Some(Path::new("/etc/jitocsp/redis-ca.pem")));
    assert_eq!(redis.key_file.as_deref(), Some(Path::new("/etc/jitocsp/r.key")));
    assert!(Config::default().database.tls_files().is_empty() && Config::default().redis.tls_files().is_empty());

    // TLS files for connections that use no TLS would protect nothing.
    let e = err_text("[database]\nurl = \"postgres://h/db\"\ntls_ca_file = \"/ca.pem\"\n", &[]);
    assert!(e.contains("database.tls_ca_file") && e.contains("sslmode=verify-full"), "{e}");
    let e = err_text("[redis]\nurl = \"redis://h:6379\"\ntls_ca_file = \"/ca.pem\"\n", &[]);
    assert!(e.contains("redis.tls_ca_file") && e.contains("rediss://"), "{e}");
    // A certificate without its key, and the reverse.
    let e = err_text("[redis]\nurl = \"rediss://h:6379\"\ntls_cert_file = \"/c.pem\"\n", &[]);
    assert!(e.contains("redis.tls_key_file"), "{e}");
    let e = err_text("[database]\nurl = \"postgres://h/db?sslmode=require\"\ntls_key_file = \"/c.key\"\n", &[]);
    assert!(e.contains("database.tls_cert_file"), "{e}");
    // sslmode values the driver does not know are read here; unknown ones are named.
    let e = err_text("[database]\nurl = \"postgres://h/db?sslmode=allow\"\n", &[]);
    assert!(e.contains("database.url") && e.contains("allow"), "{e}");
    // Turning verification off is refused.
    let e = err_text("[redis]\nurl = \"rediss://h:6379/#insecure\"\n", &[]);
    assert!(e.contains("redis.url") && e.contains("#insecure"), "{e}");
    // A TLS replica alone is enough to use the files.
    load_text(
        "[database]\nurl = \"postgres://p/db\"\nread_url = \"postgres://r/db?sslmode=verify-full\"\ntls_ca_file = \"/ca.pem\"\n",
        &[],
    )
    .unwrap();
}

#[test]
fn serve_flags_override_the_environment_and_are_validated_by_name() {
    let flag = |key, name, value: &str| Flag { section: "server", key, name, value: value.to_owned() };
    let vars = env(&[("JITOCSP_SERVER_LISTEN", "127.0.0.1:1")]);
    let c = Config::load_layers(None, vars, &[flag("listen", "--listen", "127.0.0.1:2")]).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:2");
    let e = Config::load_layers(None, env(&[]), &[flag("listen", "--listen", "garbage")]).unwrap_err().to_string();
    assert!(e.contains("server.listen") && e.contains("--listen") && e.contains("garbage"), "{e}");
    let same = [flag("listen", "--listen", "127.0.0.1:7"), flag("metrics_listen", "--metrics-listen", "127.0.0.1:7")];
    let e = Config::load_layers(None, env(&[]), &same).unwrap_err().to_string();
    assert!(e.contains("--metrics-listen") && e.contains("own address"), "{e}");
}

#[test]
fn an_expired_grace_past_a_century_is_refused() {
    let e = Config::load_inner(None, env(&[("JITOCSP_RESPONSES_EXPIRED_GRACE", "200000years")])).unwrap_err();
    assert!(e.to_string().contains("responses.expired_grace"), "{e}");
    let c = Config::load_inner(None, env(&[("JITOCSP_RESPONSES_EXPIRED_GRACE", "10years")])).unwrap();
    assert_eq!(c.responses.expired_grace, Duration::from_secs(10 * 31_557_600));
}
