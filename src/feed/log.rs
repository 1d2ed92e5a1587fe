//! What this responder knows of committed status changes, and how far it can trust that.
//!
//! Purging Redis on revocation is not enough on its own: a purge can fail, a response whose
//! status was read just before the revocation committed can be written to Redis just after
//! the purge, and a read replica can answer with a status the primary has already changed.
//! So every status change carries a version (`status_change_seq`, stamped on the row and
//! carried by the notification), every cached response remembers the version of the row it
//! was signed from, and every responder remembers each change it heard of for as long as a
//! response signed before it could still be valid. A response whose version is below a
//! change heard of is never served, whichever server it was read from and whatever the
//! clocks say.
//!
//! That is only as good as the change feed. [`FeedHealth`] holds the feed's last proof of
//! life (a notification round trip through the listening connection, see `listener`): while
//! the proof is older than [`FEED_DEADLINE`], cached responses are served only after the
//! primary confirms them. It also keeps the primary's recent WAL positions, so a replica read
//! can be bounded in lag (see [`FeedHealth::replica_is_recent`]).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::feed::payload::StatusChange;
use crate::serial::Serial;
use crate::store::Lsn;

/// How old the feed's last proof of life may be before cached responses need confirming by
/// the primary. With the listener's one-second heartbeat, a change committed while the feed
/// is silently dead is served stale for at most this long.
pub const FEED_DEADLINE: Duration = Duration::from_secs(5);

/// The most a replica may lag for its reads to be used. Far below any response validity, so
/// every change a replica read could predate is still remembered (see `prune`).
pub const MAX_REPLICA_LAG: Duration = Duration::from_secs(60);

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Change {
    issuer_id: i32,
    version: i64,
    /// When this responder heard of it (Unix seconds, its own clock).
    heard_at: i64,
}

/// The latest change heard of for one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatestChange {
    pub version: i64,
    /// Unix seconds, this responder's clock.
    pub heard_at: i64,
}

/// The set of recent changes, sharded so concurrent readers rarely share a lock.
pub struct ChangeLog {
    shards: [RwLock<HashMap<Serial, Vec<Change>>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    entries: AtomicUsize,
    pub feed: FeedHealth,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            hasher: Default::default(),
            entries: AtomicUsize::new(0),
            feed: FeedHealth::default(),
        }
    }
}

impl ChangeLog {
    fn shard(&self, serial: &Serial) -> &RwLock<HashMap<Serial, Vec<Change>>> {
        &self.shards[self.hasher.hash_one(serial) as usize % SHARDS]
    }

    /// Remembers a change heard of at `heard_at` (Unix seconds). Idempotent; the highest
    /// version per certificate wins.
    pub fn record(&self, change: &StatusChange, heard_at: i64) {
        let entry = Change { issuer_id: change.issuer_id, version: change.version, heard_at };
        let mut shard = self.shard(&change.serial).write().unwrap_or_else(|p| p.into_inner());
        let list = shard.entry(change.serial.clone()).or_default();
        match list.iter_mut().find(|c| c.issuer_id == change.issuer_id) {
            Some(existing) if existing.version <= entry.version => *existing = entry,
            Some(_) => {}
            None => {
                list.push(entry);
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The latest change heard of for this certificate, if it is still remembered.
    pub fn latest(&self, issuer_id: i32, serial: &Serial) -> Option<LatestChange> {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let shard = self.shard(serial).read().unwrap_or_else(|p| p.into_inner());
        shard
            .get(serial)?
            .iter()
            .find(|c| c.issuer_id == issuer_id)
            .map(|c| LatestChange { version: c.version, heard_at: c.heard_at })
    }

    /// Whether a status read at row version `version` is consistent with every change heard
    /// of for that certificate.
    pub fn allows(&self, issuer_id: i32, serial: &Serial, version: i64) -> bool {
        self.latest(issuer_id, serial).is_none_or(|c| c.version <= version)
    }

    /// Forgets changes heard of before `before` (Unix seconds): every response read before
    /// them has expired by then, and replica reads lag far less (see [`MAX_REPLICA_LAG`]).
    pub fn prune(&self, before: i64) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, list| {
                let before_len = list.len();
                list.retain(|c| c.heard_at >= before);
                self.entries.fetch_sub(before_len - list.len(), Ordering::Relaxed);
                !list.is_empty()
            });
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many recent primary WAL positions are kept (one per heartbeat).
const POSITIONS: usize = 128;

/// The change feed's proof of life, and the primary's recent WAL positions.
#[derive(Default)]
pub struct FeedHealth {
    /// Milliseconds since [`epoch`] at which the last proven heartbeat was sent, plus one;
    /// 0 = never proven.
    proven_at: AtomicU64,
    positions: Mutex<VecDeque<(Instant, Lsn)>>,
}

/// The process-wide origin of the monotonic millisecond clock, set a little in the past so
/// that instants shortly before the first use are still representable.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(FEED_DEADLINE * 4).unwrap_or(now)
    })
}

fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

impl FeedHealth {
    /// A heartbeat sent at `sent` came back through the listening connection: every change
    /// committed before `sent` has been delivered, as Postgres delivers notifications in
    /// commit order.
    pub fn prove(&self, sent: Instant) {
        self.proven_at.fetch_max(millis_since_epoch(sent) + 1, Ordering::AcqRel);
    }

    /// A heartbeat's payload: its send time on this process's monotonic clock.
    pub fn stamp(sent: Instant) -> u64 {
        millis_since_epoch(sent)
    }

    /// The send time a heartbeat payload stands for; `None` if it is not one of ours.
    pub fn unstamp(millis: u64) -> Option<Instant> {
        let sent = epoch().checked_add(Duration::from_millis(millis))?;
        (sent <= Instant::now()).then_some(sent)
    }

    /// The feed is (re)connecting: nothing proves it until the next heartbeat comes back.
    pub fn lost(&self) {
        self.proven_at.store(0, Ordering::Release);
    }

    /// How long ago the last proof was sent; `None` if there is none since the last loss.
    pub fn proof_age(&self) -> Option<Duration> {
        match self.proven_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(millis_since_epoch(Instant::now()).saturating_sub(at - 1))),
        }
    }

    /// Whether the feed can be trusted on its own: proven within [`FEED_DEADLINE`].
    pub fn is_live(&self) -> bool {
        self.proof_age().is_some_and(|age| age < FEED_DEADLINE)
    }

    /// Records the primary's WAL insert position at `at`.
    pub fn note_primary_position(&self, at: Instant, lsn: Lsn) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        if positions.len() == POSITIONS {
            positions.pop_front();
        }
        positions.push_back((at, lsn));
    }

    /// Whether a standby that has replayed up to `replayed` provably holds every change the
    /// primary had committed [`MAX_REPLICA_LAG`] ago: some position the primary reported
    /// within that time is at or below `replayed`.
    pub fn replica_is_recent(&self, replayed: Lsn) -> bool {
        let now = Instant::now();
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.iter().any(|(at, lsn)| *lsn <= replayed && now.saturating_duration_since(*at) <= MAX_REPLICA_LAG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(issuer_id: i32, serial: &str, revoked: bool, version: i64) -> StatusChange {
        StatusChange { issuer_id, serial: Serial::from_hex(serial).unwrap(), revoked, version }
    }

    #[test]
    fn a_read_below_a_heard_change_is_refused_whatever_its_status() {
        let log = ChangeLog::default();
        let serial = Serial::from_hex("abcd").unwrap();
        assert!(log.allows(1, &serial, 0));
        log.record(&change(1, "abcd", true, 7), 100);
        assert!(!log.allows(1, &serial, 0), "read before the change");
        assert!(!log.allows(1, &serial, 6), "read one version before the change");
        assert!(log.allows(1, &serial, 7), "read at the change");
        assert!(log.allows(1, &serial, 9), "read after a later change of the row");
        assert!(log.allows(2, &serial, 0), "another issuer's certificate");
        assert!(log.allows(1, &Serial::from_hex("abce").unwrap(), 0));
        assert_eq!(log.latest(1, &serial), Some(LatestChange { version: 7, heard_at: 100 }));
    }

    #[test]
    fn highest_version_wins_and_prune_forgets() {
        let log = ChangeLog::default();
        let serial = Serial::from_hex("01").unwrap();
        log.record(&change(1, "01", true, 3), 100);
        log.record(&change(1, "01", false, 5), 200);
        log.record(&change(1, "01", true, 4), 300);
        assert_eq!(log.len(), 1);
        assert!(!log.allows(1, &serial, 4), "unrevoked at version 5");
        log.prune(201);
        assert!(log.is_empty());
        assert!(log.allows(1, &serial, 4));
    }

    #[test]
    fn the_feed_is_live_only_after_a_recent_proof() {
        let feed = FeedHealth::default();
        assert!(!feed.is_live(), "never proven");
        feed.prove(Instant::now());
        assert!(feed.is_live());
        feed.lost();
        assert!(!feed.is_live(), "lost until proven again");
        feed.prove(Instant::now() - FEED_DEADLINE - Duration::from_millis(1));
        assert!(!feed.is_live(), "the last proof is older than the deadline");
    }

    #[test]
    fn a_replica_is_recent_only_if_it_replayed_a_position_the_primary_reported_lately() {
        let feed = FeedHealth::default();
        assert!(!feed.replica_is_recent(Lsn(u64::MAX)), "no position known yet");
        let now = Instant::now();
        feed.note_primary_position(now - MAX_REPLICA_LAG - Duration::from_secs(1), Lsn(100));
        feed.note_primary_position(now - Duration::from_secs(1), Lsn(200));
        assert!(feed.replica_is_recent(Lsn(200)));
        assert!(feed.replica_is_recent(Lsn(250)));
        assert!(!feed.replica_is_recent(Lsn(150)), "only as far as a position older than the bound");
    }
}
