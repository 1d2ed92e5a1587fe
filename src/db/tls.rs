//! Postgres over TLS: how `sslmode` in `database.url` is read, and the rustls connector
//! ([`MakeRustlsConnect`]) every Postgres connection of jitocsp is made with.
//!
//! `sslmode` is read the strict way: whenever TLS is used, the server's certificate is
//! verified, chain and host name (libpq's `verify-full`), against `tls_ca_file` or the
//! system roots ([`crate::tls`]).
//!
//! | `sslmode`                              | TLS                                     |
//! |----------------------------------------|-----------------------------------------|
//! | absent, `disable`                      | none (as before TLS support)            |
//! | `prefer`                               | if the server offers it; then verified  |
//! | `require`, `verify-ca`, `verify-full`  | always, verified (host name included)   |
//!
//! An absent `sslmode` means no TLS (libpq's default is `prefer`): a server with `ssl = on`
//! and a self-signed certificate, as many distributions install it, keeps working after an
//! upgrade, rather than failing verification. `prefer` falls back to plaintext when the server
//! offers no TLS, which an active attacker can force: use `verify-full`. The driver itself
//! knows only disable/prefer/require, so the mode is taken out of the string here and set on
//! its configuration.

use std::borrow::Cow;

use tokio_postgres::config::SslMode;

use crate::tls::{TlsError, TlsFiles};

mod connector;

pub use connector::MakeRustlsConnect;

/// Whether a connection uses TLS, from `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext.
    Off,
    /// TLS when the server offers it (`prefer`).
    IfOffered,
    /// TLS or no connection (`require`, `verify-ca`, `verify-full`).
    Required,
}

/// Why a Postgres connection could not be set up, before any network traffic.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error(
        "sslmode={0:?} is not supported; use verify-full (or require, verify-ca: TLS with the certificate and host \
         name verified), prefer, or disable"
    )]
    UnknownMode(String),
    #[error(transparent)]
    Url(tokio_postgres::Error),
    #[error("TLS set-up")]
    Tls(#[from] TlsError),
}

/// Where and how to connect: the driver's configuration, `sslmode` applied, and the connector.
#[derive(Clone)]
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: TlsMode,
}

impl PgTarget {
    /// Parses `url` (a postgres:// URL or a key=value string) and builds its connector from
    /// `files`. The files are read only when the URL asks for TLS.
    pub fn new(url: &str, files: &TlsFiles) -> Result<Self, PgTlsError> {
        let (config, mode) = parse(url)?;
        let client_config = match mode {
            // The driver never calls the connector with sslmode=disable.
            TlsMode::Off => crate::tls::trust_nothing()?,
            TlsMode::IfOffered | TlsMode::Required => files.load()?.client_config()?,
        };
        Ok(PgTarget { config, tls: MakeRustlsConnect::new(client_config), mode })
    }
}

/// The driver's configuration for `url` with `sslmode` applied, and the mode.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, TlsMode), PgTlsError> {
    let (rest, sslmode) = split_sslmode(url);
    let mut config: tokio_postgres::Config = rest.parse().map_err(PgTlsError::Url)?;
    let mode = match sslmode.as_deref() {
        None | Some("disable") => TlsMode::Off,
        Some("prefer") => TlsMode::IfOffered,
        Some("require" | "verify-ca" | "verify-full") => TlsMode::Required,
        Some(other) => return Err(PgTlsError::UnknownMode(other.to_owned())),
    };
    config.ssl_mode(match mode {
        TlsMode::Off => SslMode::Disable,
        TlsMode::IfOffered => SslMode::Prefer,
        TlsMode::Required => SslMode::Require,
    });
    Ok((config, mode))
}

/// `url` without its `sslmode` setting, and that setting (the last one, as the driver would
/// take it). A string this cannot read is returned whole, for the driver to report.
fn split_sslmode(url: &str) -> (Cow<'_, str>, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.into(), None) };
        let mut mode = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", value)) => {
                    mode = Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned());
                    false
                }
                _ => true,
            })
            .collect();
        if mode.is_none() {
            return (url.into(), None);
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest.into(), mode)
    } else {
        split_keyword_sslmode(url).map_or((url.into(), None), |(rest, mode)| (rest.into(), mode))
    }
}

/// As [`split_sslmode`] for a libpq key=value string (`host=h sslmode = 'verify-full'`),
/// tokenised as the driver does (quotes, backslash escapes, spaces around `=`).
fn split_keyword_sslmode(s: &str) -> Option<(String, Option<String>)> {
    let b = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let (mut i, mut kept, mut mode) = (0, String::new(), None);
    loop {
        let start = i;
        i = skip_ws(i);
        if i == b.len() {
            kept.push_str(&s[start..]);
            return Some((kept, mode));
        }
        let key_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[key_start..i];
        i = skip_ws(i);
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => return None,
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') if i + 1 < b.len() => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        if key == "sslmode" {
            mode = Some(String::from_utf8_lossy(&value).into_owned());
        } else {
            kept.push_str(&s[start..i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(url: &str) -> Result<TlsMode, PgTlsError> {
        parse(url).map(|(_, mode)| mode)
    }

    #[test]
    fn sslmode_is_read_strictly_in_urls() {
        let base = "postgres://u:p@db.example:5432/jitocsp";
        assert_eq!(mode_of(base).unwrap(), TlsMode::Off);
        assert_eq!(mode_of(&format!("{base}?sslmode=disable")).unwrap(), TlsMode::Off);
        assert_eq!(mode_of(&format!("{base}?sslmode=prefer")).unwrap(), TlsMode::IfOffered);
        for strict in ["require", "verify-ca", "verify-full"] {
            let url = format!("{base}?application_name=x&sslmode={strict}&connect_timeout=3");
            let (config, mode) = parse(&url).unwrap();
            assert_eq!(mode, TlsMode::Required, "{strict}");
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{strict}");
            // The other parameters survive the removal of sslmode.
            assert_eq!(config.get_application_name(), Some("x"));
            assert_eq!(config.get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
            assert_eq!(config.get_password(), Some(&b"p"[..]));
        }
        assert_eq!(parse(base).unwrap().0.get_ssl_mode(), SslMode::Disable);
        let error = mode_of(&format!("{base}?sslmode=allow")).unwrap_err();
        assert!(matches!(error, PgTlsError::UnknownMode(ref m) if m == "allow"), "{error}");
    }

    #[test]
    fn sslmode_is_read_in_key_value_strings() {
        let (config, mode) =
            parse(r"host=db.example user=u password='a b\'c' sslmode = 'verify-full' dbname=jitocsp").unwrap();
        assert_eq!(mode, TlsMode::Required);
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_dbname(), Some("jitocsp"));
        assert_eq!(mode_of("host=h sslmode=prefer").unwrap(), TlsMode::IfOffered);
        assert_eq!(mode_of("host=h").unwrap(), TlsMode::Off);
        // A password that merely mentions sslmode is not a setting.
        let (config, mode) = parse("host=h password='sslmode=require'").unwrap();
        assert_eq!(mode, TlsMode::Off);
        assert_eq!(config.get_password(), Some(&b"sslmode=require"[..]));
        assert!(matches!(parse("host=h sslmode=bogus"), Err(PgTlsError::UnknownMode(_))));
        assert!(matches!(parse("host=h password='unterminated"), Err(PgTlsError::Url(_))));
    }
}
