//! Postgres: connections outside the responders' pools (the CLI's, the listener's and
//! `migrate`'s), the schema ([`migrate`]), and the SQL, one submodule per table.
//!
//! The responders' read pools are built in [`crate::store::postgres`]; everything else that
//! needs one connection to the primary comes through [`connect`], so TLS, timeouts and the
//! way errors are told are decided once.
//!
//! Every statement on a table lives in that table's module ([`certificates`],
//! [`audit_log`], [`pending_purges`] (both purge tables), [`cdn_purges`], [`issuers`]) as a small typed
//! function, or as a constant where the caller prepares it itself (the responders' hot
//! path). What a statement is *for* (the transaction rules of a status change, the settle
//! rule of a purge) is told where it is used: [`crate::status`], [`crate::purge`].

pub mod audit_log;
pub mod cdn_purges;
pub mod certificates;
pub mod issuers;
pub mod migrate;
pub mod pending_purges;
pub mod tls;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

use crate::tls::TlsFiles;

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Boxed: the TLS errors name files and carry rustls' error, and this one travels inside
    /// every caller's error type.
    #[error(transparent)]
    Setup(Box<tls::PgTlsError>),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

impl From<tls::PgTlsError> for ConnectError {
    fn from(e: tls::PgTlsError) -> Self {
        ConnectError::Setup(Box::new(e))
    }
}

/// Connects to Postgres (over TLS when `url`'s `sslmode` asks for it, see [`tls`]) and
/// drives the connection on a background task. The connection task ends (logging why at
/// debug level) when the client is dropped.
pub async fn connect(url: &str, files: &TlsFiles) -> Result<Client, ConnectError> {
    let target = tls::PgTarget::new(url, files)?;
    let (client, connection) = target.config.connect(target.tls).await.map_err(PgError::from)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Full text of a Postgres error: the server's severity, message and detail, or the client
/// error with its causes (the plain `Display` of a server error says only "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        text
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }
}

/// A Postgres error that tells itself in full: its `Display` is [`error_text`] (the server's
/// severity, message and detail), where the driver's own says only "db error".
///
/// The driver's error stays inside ([`PgError::inner`]) for code that needs its SQLSTATE.
/// For a server error the chain stops here, since the text already holds all of it; for a
/// client error (connection refused...) the causes follow as the driver gives them, and a
/// printer that skips repeated text shows each once.
#[derive(Debug)]
pub struct PgError(tokio_postgres::Error);

impl PgError {
    pub fn inner(&self) -> &tokio_postgres::Error {
        &self.0
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError(e)
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_text(&self.0))
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.0.as_db_error() {
            Some(_) => None,
            None => std::error::Error::source(&self.0),
        }
    }
}

/// The current transaction's start time (`now()`), or the statement's outside one.
pub async fn transaction_now(client: &impl GenericClient) -> Result<DateTime<Utc>, tokio_postgres::Error> {
    Ok(client.query_one("SELECT now()", &[]).await?.get(0))
}
