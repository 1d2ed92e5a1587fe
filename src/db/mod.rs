//! Postgres connections outside the responders' pools: the CLI's, the listener's and
//! `migrate`'s, plus the schema itself ([`migrate`]).
//!
//! The responders' read pools are built in [`crate::store::postgres`]; everything else that
//! needs one connection to the primary comes through [`connect`], so TLS, timeouts and the
//! way errors are told are decided once.

pub mod migrate;

use tokio_postgres::{Client, NoTls};

/// Connects to Postgres without TLS and drives the connection on a background task.
/// The connection task ends (logging why at debug level) when the client is dropped.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
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
