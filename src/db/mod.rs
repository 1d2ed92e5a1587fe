//! Postgres connections outside the responders' pools: the CLI's, the listener's and
//! `migrate`'s, plus the schema itself ([`migrate`]).
//!
//! The responders' read pools are built in [`crate::store::postgres`]; everything else that
//! needs one connection to the primary comes through [`connect`], so TLS, timeouts and the
//! way errors are told are decided once.

pub mod migrate;
pub mod tls;

use tokio_postgres::Client;

use crate::tls::TlsFiles;

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Setup(#[from] tls::PgTlsError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// The whole text, as [`error_text`] gives it for a Postgres error.
    pub fn text(&self) -> String {
        match self {
            ConnectError::Postgres(e) => error_text(e),
            ConnectError::Setup(e) => chain_text(e),
        }
    }
}

/// Connects to Postgres (over TLS when `url`'s `sslmode` asks for it, see [`tls`]) and
/// drives the connection on a background task. The connection task ends (logging why at
/// debug level) when the client is dropped.
pub async fn connect(url: &str, files: &TlsFiles) -> Result<Client, ConnectError> {
    let target = tls::PgTarget::new(url, files)?;
    let (client, connection) = target.config.connect(target.tls).await?;
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
        chain_text(e)
    }
}

/// An error and its causes, joined by ": ".
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
