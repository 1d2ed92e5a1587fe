//! Passwords: reading `*.password_file`, putting the password into the connection strings,
//! and keeping it out of `Debug` output and error messages.
//!
//! The URLs stay strings (the form the connection code takes), but they are parsed here by
//! the `url` crate and the Postgres driver's own parser rather than by hand.

use std::path::Path;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::{Config, ConfigError, Origins};

/// Reads the password files and puts their passwords into the URLs, then turns bare
/// `host:port` Redis nodes into URLs with the scheme and user info of `redis.url`.
pub(super) fn apply(config: &mut Config, origins: &Origins) -> Result<(), ConfigError> {
    let db = &mut config.database;
    if let Some(password) = read_password_file(origins, "database.password_file", &db.password_file)? {
        db.url = postgres_with_password(origins, "database.url", &db.url, &password)?;
        if !db.read_url.is_empty() {
            db.read_url = postgres_with_password(origins, "database.read_url", &db.read_url, &password)?;
        }
    }
    let redis = &mut config.redis;
    if let Some(password) = read_password_file(origins, "redis.password_file", &redis.password_file)? {
        redis.url = redis_with_password(origins, "redis.url", &redis.url, &password)?;
        for node in &mut redis.nodes {
            // A bare host:port gets the URL's user info, password included, below.
            if node.contains("://") {
                *node = redis_with_password(origins, "redis.nodes", node, &password)?;
            }
        }
    }

    let (scheme, userinfo) = match url::Url::parse(&redis.url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {
            let userinfo = match (u.username(), u.password()) {
                ("", None) => String::new(),
                (user, None) => format!("{user}@"),
                (user, Some(password)) => format!("{user}:{password}@"),
            };
            (u.scheme().to_string(), userinfo)
        }
        _ => ("redis".to_string(), String::new()),
    };
    for node in &mut redis.nodes {
        let trimmed = node.trim();
        if trimmed.is_empty() {
            return Err(origins.invalid("redis.nodes", "contains an empty entry"));
        }
        if trimmed.contains("://") {
            *node = trimmed.to_string();
        } else if trimmed.contains(['/', '@', '?', '#']) || trimmed.contains(char::is_whitespace) {
            let shown = redact_url(trimmed);
            return Err(
                origins.invalid("redis.nodes", format!("entry {shown:?} is neither host:port nor a redis:// URL"))
            );
        } else {
            *node = format!("{scheme}://{userinfo}{trimmed}");
        }
    }
    Ok(())
}

fn read_password_file(origins: &Origins, key: &str, path: &str) -> Result<Option<String>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let contents = crate::secret_file::read_to_string(Path::new(path)).map_err(|source| ConfigError::PasswordFile {
        key: key.to_string(),
        origin: origins.of(key).to_string(),
        source,
    })?;
    match contents.trim() {
        "" => Err(origins.invalid(key, format!("password file {path} is empty"))),
        password => Ok(Some(password.to_string())),
    }
}

fn conflict(origins: &Origins, key: &str, url: &str) -> ConfigError {
    let shown = redact_url(url);
    origins
        .invalid(key, format!("{shown} already contains a password, and a password_file is set; use one or the other"))
}

/// `url` (a postgres:// URL or a libpq key=value string) with `password` added: as the
/// `password` query parameter of a URL, which the driver reads like the user-info one.
fn postgres_with_password(origins: &Origins, key: &str, url: &str, password: &str) -> Result<String, ConfigError> {
    let (parsed, _) =
        crate::db::tls::parse(url).map_err(|e| origins.invalid(key, format!("{}: {e}", not_postgres(url))))?;
    if parsed.get_password().is_some_and(|p| !p.is_empty()) {
        return Err(conflict(origins, key, url));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let join = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{join}password={}", utf8_percent_encode(password, NON_ALPHANUMERIC)))
    } else {
        Ok(format!("{url} password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'")))
    }
}

pub(super) fn not_postgres(url: &str) -> String {
    format!("{} is neither a postgres:// URL nor a key=value connection string", redact_url(url))
}

/// `url` with `password` added: in the user info, or for a Unix socket in the `pass` query
/// parameter (where redis-rs looks for it).
fn redis_with_password(origins: &Origins, key: &str, url: &str, password: &str) -> Result<String, ConfigError> {
    let mut parsed = url::Url::parse(url).map_err(|_| {
        origins.invalid(key, format!("{} is not a URL; cannot add the password to it", redact_url(url)))
    })?;
    let has_pass_param = parsed.query_pairs().any(|(name, _)| name == "pass");
    if parsed.password().is_some_and(|p| !p.is_empty()) || has_pass_param {
        return Err(conflict(origins, key, url));
    }
    if matches!(parsed.scheme(), "unix" | "redis+unix") {
        parsed.query_pairs_mut().append_pair("pass", password);
    } else if parsed.set_password(Some(password)).is_err() {
        return Err(origins.invalid(key, format!("{} cannot carry a password", redact_url(url))));
    }
    Ok(parsed.to_string())
}

/// `url` with any password replaced by `***`: the password of `scheme://user:password@host`,
/// `password`/`pass` query parameters, and `password=` in a libpq key=value string. Use it
/// whenever a connection URL is logged.
pub fn redact_url(url: &str) -> String {
    const MASK: &str = "***";
    const UNPARSEABLE: &str = "<unparseable, redacted>";
    let is_secret = |name: &str| matches!(name, "password" | "pass");
    let Ok(mut parsed) = url::Url::parse(url) else {
        if !url.contains('@') && !url.contains("pass") {
            return url.to_string();
        }
        // A libpq key=value string; a quoted value could hide spaces, so redact it all.
        if url.contains("://") || url.contains(['\'', '\\']) {
            return UNPARSEABLE.to_string();
        }
        let words = url.split_whitespace().map(|w| match w.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}={MASK}"),
            _ => w.to_string(),
        });
        return words.collect::<Vec<_>>().join(" ");
    };
    let secret_param = parsed.query_pairs().any(|(name, _)| is_secret(&name));
    if parsed.password().is_none() && !secret_param {
        return url.to_string();
    }
    if parsed.password().is_some() && parsed.set_password(Some(MASK)).is_err() {
        return UNPARSEABLE.to_string();
    }
    if secret_param {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret(&name) { MASK.to_string() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}
