//! Hears committed status changes from Postgres (LISTEN) and applies them to this instance,
//! and proves, four times a second, that it still hears them.
//!
//! On every (re)connection it first listens, then reads every change of the last validity
//! window from `certificates.changed_at`, so nothing committed while it was away is missed,
//! and has the issuers reloaded (see [`crate::issuers`]) for the same reason. Changes to the
//! `issuers` table arrive on their own channel and have the issuers reloaded too.
//!
//! A connection can die silently: a NAT or load balancer drops its state, the socket stays
//! open and nothing arrives. So a heartbeat task sends, every [`HEARTBEAT_INTERVAL`], a
//! notification to a channel only this instance listens on, through the same connection.
//! Postgres delivers notifications in commit order, so when a heartbeat sent at `t` comes
//! back, every change committed before `t` has been heard: that is the feed's proof of life
//! ([`crate::feed::log::FeedHealth`]). The same query reads the primary's WAL position, which
//! bounds how far a replica read may lag. While no heartbeat has come back within
//! [`crate::feed::log::FEED_DEADLINE`] (one second), the pipeline serves only responses the
//! primary confirms; after [`crate::feed::log::FEED_LOST_AFTER`] the connection is closed and
//! started again. TCP keepalives and a TCP user timeout on the connection make the kernel
//! notice a dead peer too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures_util::{stream, FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::feed::log::{ChangeLog, FEED_LOST_AFTER};
use crate::feed::payload::{StatusChange, StatusChanges, CHANNEL};
use crate::issuers::CHANNEL as ISSUERS_CHANNEL;
use crate::metrics as m;
use crate::serial::Serial;
use crate::store::Lsn;
use crate::tls::TlsFiles;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often the feed proves itself alive: a quarter of [`crate::feed::log::FEED_DEADLINE`].
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// The `application_name` of the listening connection, so operators (and fault tests) can
/// tell it from the pool's connections in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "jitocsp-listener";

/// What the listener keeps informed: a responder, which remembers the changes it hears (and
/// the feed's proof of life) and drops its own copies of a changed certificate's responses.
pub trait Subscriber: Send + Sync + 'static {
    fn changes(&self) -> &ChangeLog;
    /// Forgets this instance's copies of a certificate's responses after a status change.
    fn forget(&self, issuer_id: i32, serial: &Serial);
    /// The `issuers` table may have changed (a notification, or a notification possibly
    /// missed while the connection was down).
    fn issuers_changed(&self);
}

/// Why a listening connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres connection set-up: {0}")]
    Setup(#[from] crate::db::tls::PgTlsError),
    #[error("{0} did not answer within {FEED_LOST_AFTER:?}")]
    Timeout(&'static str),
    #[error("no heartbeat came back for {0:?}")]
    Silent(Duration),
    #[error("the connection closed")]
    Closed,
}

/// Runs forever: listen, apply, prove, reconnect. Each connection reads `tls` afresh, so a
/// renewed client certificate is used from the next reconnection on.
pub async fn run<R: Subscriber>(database_url: String, tls: TlsFiles, responder: Arc<R>, window: Duration) {
    loop {
        let Err(error) = listen(&database_url, &tls, &responder, window).await;
        tracing::warn!(%error, "status-change feed lost; serving only confirmed responses until it is back");
        responder.changes().feed.lost();
        metrics::gauge!(m::LISTENER_CONNECTED).set(0.0);
        metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Bounds a step of the connection's set-up: a blackholed connection never answers.
async fn bounded<T>(
    what: &'static str,
    step: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ListenError> {
    tokio::time::timeout(FEED_LOST_AFTER, step).await.map_err(|_| ListenError::Timeout(what))?.map_err(Into::into)
}

async fn listen<R: Subscriber>(
    database_url: &str,
    tls: &TlsFiles,
    responder: &Arc<R>,
    window: Duration,
) -> Result<std::convert::Infallible, ListenError> {
    let crate::db::tls::PgTarget { mut config, tls, .. } = crate::db::tls::PgTarget::new(database_url, tls)?;
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(FEED_LOST_AFTER)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(FEED_LOST_AFTER);
    let (client, mut connection) = bounded("connecting", config.connect(tls)).await?;
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send((n.channel().to_owned(), n.payload().to_owned())).is_err() {
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
    let _driver = AbortOnDrop(driver);

    let heartbeat_channel = format!("jitocsp_alive_{}", own_channel_suffix());
    let listen = format!("LISTEN {CHANNEL}; LISTEN {ISSUERS_CHANNEL}; LISTEN {heartbeat_channel}");
    bounded("LISTEN", client.batch_execute(&listen)).await?;
    // Issuer changes made while the connection was down were not heard: reload them all.
    responder.issuers_changed();
    let since = Utc::now() - TimeDelta::from_std(window).unwrap_or(TimeDelta::days(10));
    let recent_changes = catch_up(&client, since, &**responder).await?;
    tracing::info!(recent_changes, "listening for status changes");

    let client = Arc::new(client);
    let heartbeat = tokio::spawn(heartbeats(client.clone(), heartbeat_channel.clone(), responder.clone()));
    let _heartbeat = AbortOnDrop(heartbeat);
    let connected_at = Instant::now();
    let mut check = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            message = notifications.recv() => {
                let Some((channel, payload)) = message else { return Err(ListenError::Closed) };
                if channel == heartbeat_channel {
                    heartbeat_returned(&**responder, &payload);
                } else if channel == ISSUERS_CHANNEL {
                    tracing::info!(issuer_id = %payload, "issuers changed");
                    responder.issuers_changed();
                } else if channel == CHANNEL {
                    match StatusChanges::parse(&payload) {
                        Ok(changes) => {
                            metrics::counter!(m::NOTIFICATIONS).increment(1);
                            log_heard(&changes);
                            let changes: Vec<StatusChange> = changes.changes().collect();
                            apply(&**responder, &changes);
                        }
                        Err(error) => tracing::error!(%error, "ignoring notification"),
                    }
                }
            }
            _ = check.tick() => {
                let feed = &responder.changes().feed;
                let silent_for = feed.proof_age().unwrap_or_else(|| connected_at.elapsed());
                if silent_for >= FEED_LOST_AFTER {
                    return Err(ListenError::Silent(silent_for));
                }
                let live = feed.is_live();
                metrics::gauge!(m::LISTENER_CONNECTED).set(if live { 1.0 } else { 0.0 });
                metrics::gauge!(m::FEED_PROOF_AGE_SECONDS).set(silent_for.as_secs_f64());
            }
        }
    }
}

/// Sends a heartbeat every [`HEARTBEAT_INTERVAL`]: a notification to this instance's own
/// channel carrying its send time, and a read of the primary's WAL position. Each goes out on
/// the beat, without waiting for the one before: with a round trip of R, the feed's proof is
/// then at most the interval plus R old, where waiting would make it 2R once R passes the
/// interval (untrusted from R = 500 ms instead of 750). Ends if a heartbeat cannot even be
/// sent in time; the listener then notices the missing proof.
async fn heartbeats<R: Subscriber>(client: Arc<tokio_postgres::Client>, channel: String, responder: Arc<R>) {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most FEED_LOST_AFTER / HEARTBEAT_INTERVAL in flight: each gives up after that long.
    let mut in_flight = stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = interval.tick() => in_flight.push(heartbeat(&client, &channel)),
            Some(sent) = in_flight.next() => match sent {
                Ok((sent, Some(lsn))) => responder.changes().feed.note_primary_position(sent, lsn),
                Ok((_, None)) => {}
                Err(problem) => {
                    tracing::warn!("heartbeat {problem}");
                    return;
                }
            },
        }
    }
}

/// One heartbeat: its send time and the primary's WAL position then, if it says.
async fn heartbeat(client: &tokio_postgres::Client, channel: &str) -> Result<(Instant, Option<Lsn>), String> {
    let sent = Instant::now();
    let payload = crate::feed::log::FeedHealth::stamp(sent).to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &payload];
    let query = client.query_one("SELECT pg_notify($1, $2), pg_current_wal_lsn()::text", &params);
    match tokio::time::timeout(FEED_LOST_AFTER, query).await {
        Ok(Ok(row)) => Ok((sent, row.get::<_, Option<&str>>(1).and_then(Lsn::parse))),
        Ok(Err(error)) => Err(format!("failed: {error}")),
        Err(_) => Err(format!("not answered within {FEED_LOST_AFTER:?}")),
    }
}

fn heartbeat_returned<R: Subscriber>(responder: &R, payload: &str) {
    let feed = &responder.changes().feed;
    match payload.parse().ok().and_then(crate::feed::log::FeedHealth::unstamp) {
        Some(sent) => {
            let was_live = feed.is_live();
            feed.prove(sent);
            if !was_live {
                tracing::info!("status-change feed proven alive");
                metrics::gauge!(m::LISTENER_CONNECTED).set(1.0);
            }
        }
        None => tracing::error!(payload, "ignoring a malformed heartbeat"),
    }
}

/// A suffix no other instance uses (process id and start time), so that only this instance
/// listens on its heartbeat channel.
fn own_channel_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{}_{nanos}", std::process::id())
}

/// How many rows of the catch-up are applied at a time: the read is streamed, so a responder
/// that (re)connects after a mass revocation never holds millions of rows at once.
const CATCH_UP_CHUNK: usize = 1024;

/// Reads every change since `since` and applies it, a chunk at a time; returns how many there
/// were. After a mass revocation that is millions of rows, which no fixed deadline fits on
/// every machine and load (3,000,000 took 3.5 s on an idle 2-core box): the read is bounded
/// by its progress instead, each row due within [`FEED_LOST_AFTER`] of the one before, so a
/// dead connection is still noticed and a long catch-up is not restarted from the beginning
/// forever.
async fn catch_up<R: Subscriber>(
    client: &tokio_postgres::Client,
    since: chrono::DateTime<Utc>,
    responder: &R,
) -> Result<usize, ListenError> {
    const WHAT: &str = "the catch-up read";
    let rows = bounded(WHAT, client.query_raw(crate::db::certificates::CHANGES_SINCE, [&since])).await?;
    let mut rows = std::pin::pin!(rows);
    let (mut chunk, mut count) = (Vec::with_capacity(CATCH_UP_CHUNK), 0);
    while let Some(row) = bounded(WHAT, rows.next().map(Option::transpose)).await? {
        count += 1;
        let Ok(serial) = Serial::from_signed_be(row.get::<_, &[u8]>(1)) else { continue };
        chunk.push(StatusChange { issuer_id: row.get(0), serial, revoked: row.get(2), version: row.get(3) });
        if chunk.len() == CATCH_UP_CHUNK {
            apply(responder, &chunk);
            chunk.clear();
        }
    }
    apply(responder, &chunk);
    Ok(count)
}

/// A notification of at most this many changes is logged a line per change; a larger one (a
/// bulk revocation sends a few hundred per notification, millions in all) in one line, with
/// the changes at debug level.
const LOGGED_EACH: usize = 16;

fn log_heard(changes: &StatusChanges) {
    let StatusChanges { issuer_id, revoked, version, ref serials } = *changes;
    if serials.len() <= LOGGED_EACH {
        for serial in serials {
            tracing::info!(issuer_id, %serial, revoked, version, "status change");
        }
    } else {
        tracing::info!(issuer_id, count = serials.len(), revoked, version, "status changes");
        for serial in serials {
            tracing::debug!(issuer_id, %serial, revoked, version, "status change");
        }
    }
}

/// Records changes as heard now and drops this instance's copies of their responses.
fn apply<R: Subscriber>(responder: &R, changes: &[StatusChange]) {
    let heard = changes.iter().map(|change| (change.issuer_id, &change.serial, change.version));
    responder.changes().record_all(heard, Utc::now().timestamp());
    for change in changes {
        responder.forget(change.issuer_id, &change.serial);
    }
}

/// Aborts a background task when the connection it belongs to is given up.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
