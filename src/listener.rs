//! Hears committed status changes from Postgres (LISTEN) and applies them to this instance.
//!
//! On every (re)connection it first listens, then reads every change of the last validity
//! window from `certificates.changed_at`, so nothing committed while it was away is missed.
//! While disconnected it marks the change log as not listening, and the pipeline then checks
//! cached responses against Postgres before serving them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::cache::ResponseCache;
use crate::metrics as m;
use crate::notify::{StatusChange, CHANNEL};
use crate::pipeline::Responder;
use crate::serial::Serial;
use crate::store::StatusStore;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Runs forever: listen, apply, reconnect.
pub async fn run<C: ResponseCache, S: StatusStore>(
    database_url: String,
    responder: Arc<Responder<C, S>>,
    window: Duration,
) {
    loop {
        match listen_once(&database_url, &responder, window).await {
            Ok(()) => tracing::warn!("notification connection closed; reconnecting"),
            Err(error) => tracing::warn!(%error, "notification listener failed; reconnecting"),
        }
        responder.changes().set_listening(false);
        metrics::gauge!(m::LISTENER_CONNECTED).set(0.0);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once<C: ResponseCache, S: StatusStore>(
    database_url: &str,
    responder: &Arc<Responder<C, S>>,
    window: Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(database_url, NoTls).await?;
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                    if sender.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "notification connection error");
                    break;
                }
            }
        }
    });

    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let since = Utc::now() - TimeDelta::from_std(window).unwrap_or(TimeDelta::days(10));
    let rows = client
        .query(
            "SELECT issuer_id, serial, reason IS NOT NULL, changed_at FROM certificates \
             WHERE changed_at IS NOT NULL AND changed_at > $1",
            &[&since],
        )
        .await?;
    for row in &rows {
        let Ok(serial) = Serial::from_signed_be(row.get::<_, &[u8]>(1)) else { continue };
        let changed_at: DateTime<Utc> = row.get(3);
        apply(responder, &StatusChange { issuer_id: row.get(0), serial, revoked: row.get(2), changed_at });
    }
    tracing::info!(recent_changes = rows.len(), "listening for status changes");
    responder.changes().set_listening(true);
    metrics::gauge!(m::LISTENER_CONNECTED).set(1.0);

    while let Some(payload) = notifications.recv().await {
        match StatusChange::parse(&payload) {
            Ok(change) => {
                metrics::counter!(m::NOTIFICATIONS).increment(1);
                tracing::info!(issuer_id = change.issuer_id, serial = %change.serial, revoked = change.revoked, "status change");
                apply(responder, &change);
            }
            Err(error) => tracing::error!(%error, "ignoring notification"),
        }
    }
    driver.abort();
    Ok(())
}

/// Records a change as effective from the moment it is heard of, if that is later than the
/// row's `changed_at`: `changed_at` is stamped before the transaction commits, and a bulk
/// revocation can take seconds between the two. A status read before the commit is
/// necessarily read before the notification (or the catch-up read) that reports it, so
/// refusing responses read before that moment (plus the margin, for clock skew) is safe
/// however long the transaction was.
fn apply<C: ResponseCache, S: StatusStore>(responder: &Responder<C, S>, change: &StatusChange) {
    let heard = StatusChange { changed_at: change.changed_at.max(Utc::now()), ..change.clone() };
    responder.changes().record(&heard);
    responder.forget(change.issuer_id, &change.serial);
}
