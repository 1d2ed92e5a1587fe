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
//! primary confirms them. After [`FEED_LOST_AFTER`] without one, the listener gives the
//! connection up and reconnects, and the instance reports itself not ready. It also keeps
//! the primary's recent WAL positions, so a replica read can be bounded in lag (see
//! [`FeedHealth::replica_is_recent`]).
//!
//! # What a remembered change costs
//!
//! A mass revocation means millions of changes, remembered by every responder for a whole
//! validity period, so a change is kept as 16 bytes, a 64-bit key and its version, plus about
//! two bytes of index and filter (measured in docs/benchmarks.md). The key is a keyed hash (SipHash, with a random key per process) of the issuer and serial, not
//! the serial. Two certificates may share a key; the log then answers for both with the
//! higher of their versions, which can only refuse a response that could have been served
//! (the other certificate's is read and signed again from Postgres on each request until the
//! change is past the horizon), never serve one that should not be. With 64-bit keys and
//! millions of changes, that is about one lookup in 10^12.
//!
//! The latest changes go to a small map; every few thousand it is frozen into an immutable
//! run sorted by key, with an index by the key's top bits (`runs`). The upkeep merges
//! neighbouring runs, without holding the lock while it builds the merged one, so that a
//! lookup sees at most a handful of runs; it forgets whole runs once their newest change is
//! past the horizon, without looking at their entries. A Bloom filter of every remembered key
//! (`filter`) answers a lookup for any other certificate, nearly every request, with one
//! cache line; a lookup while nothing at all is remembered is one atomic load.
//!
//! # When the log is full
//!
//! At most `responses.max_remembered_changes` changes are remembered (plus the few thousand of
//! the map). Past that the oldest run is forgotten, but never silently: the log raises a
//! [`Floor`], the highest version among the forgotten changes, and notes their keys in
//! another Bloom filter. Until the newest forgotten change is past the horizon, a
//! cached response below the floor for a certificate the filter may hold is
//! [`Verdict::Confirm`]: served only once the primary says the row is still at the
//! response's version. That costs a Postgres point read per such hit, instead of a wrong
//! answer; `/readyz` and the `jitocsp_status_change_floor_active` gauge say so. A reconnect of
//! the feed hears the forgotten changes again in its catch-up and remembers them anew,
//! pushing older ones out: the floor may then last up to a validity period longer.

mod filter;
mod runs;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

#[cfg(test)]
use crate::feed::payload::StatusChange;
use crate::serial::Serial;
use crate::store::Lsn;
use filter::Filter;
pub(crate) use runs::KeyHasher;
use runs::{Key, Recent, Run, State};

/// How old the feed's last proof of life may be before cached responses need confirming by
/// the primary: a change committed while the feed is silently dead is served stale for at
/// most this long, the one second the contract allows (SPEC invariants 1 and 5). The
/// listener's heartbeat comes every [`crate::feed::listener::HEARTBEAT_INTERVAL`], so a proof
/// is normally a quarter of that old, and a round trip may take 750 ms before it counts.
pub const FEED_DEADLINE: Duration = Duration::from_secs(1);

/// How long the feed may go unproven before the listener gives its connection up and
/// reconnects, and `/readyz` reports it: longer than [`FEED_DEADLINE`], so that a slow round
/// trip costs primary confirmations for a moment, not a reconnection and a catch-up.
pub const FEED_LOST_AFTER: Duration = Duration::from_secs(5);

/// The most a replica may lag for its reads to be used. Far below any response validity, so
/// every change a replica read could predate is still remembered (see `prune`), or below the
/// floor if the log was full.
pub const MAX_REPLICA_LAG: Duration = Duration::from_secs(60);

/// `responses.max_remembered_changes` unless configured: about 40 MiB when full.
pub const DEFAULT_MAX_REMEMBERED: usize = 2_000_000;

/// How many changes the map holds before it is frozen into a run (fewer with a small limit).
const FREEZE_AT: usize = 4096;

/// How many runs the upkeep merges down to: a lookup of a remembered key searches each.
const MAX_RUNS: usize = 8;

/// The latest change heard of for one certificate (or for every certificate sharing its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatestChange {
    pub version: i64,
    /// Unix seconds, this responder's clock. For a change kept in a run, the newest of that
    /// run's: later, so it can only make a date validator less trusted.
    pub heard_at: i64,
}

/// Changes this responder forgot because the log was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floor {
    /// The highest version among them: a response signed from a row at this version or above
    /// is consistent with all of them.
    pub version: i64,
    /// When the newest of them was heard (Unix seconds): the floor lifts once that is past
    /// the horizon.
    pub heard_at: i64,
    /// By when every one of them had been heard, on [`FeedHealth`]'s millisecond clock.
    heard_by: u64,
}

/// What may be done with a cached response, given what was heard of its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent with every change heard of.
    Allowed,
    /// Signed from a row older than a change heard of: never served.
    Refused,
    /// Signed from a row that may be older than a change this responder forgot: served only
    /// once the primary confirms the row is still at the response's version.
    Confirm,
}

/// When a status read began, on this process's monotonic clock: a read from the primary
/// reflects every change heard of before it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStart(u64);

impl ReadStart {
    /// A replica's read, which reflects no change this responder can date: it may predate
    /// any forgotten change.
    pub const UNKNOWN: ReadStart = ReadStart(0);

    pub fn now() -> Self {
        ReadStart(millis_since_epoch(Instant::now()))
    }
}

/// What this responder heard of one certificate: looked up once per request (no allocation),
/// then asked about each cached response or status read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heard {
    latest: Option<LatestChange>,
    /// By when `latest` had been heard, on [`FeedHealth`]'s millisecond clock.
    latest_heard_by: u64,
    /// The floor, if this certificate may be among the forgotten changes.
    floor: Option<Floor>,
}

impl Heard {
    /// The latest change remembered, if any.
    pub fn latest(&self) -> Option<LatestChange> {
        self.latest
    }

    /// What may be done with a cached response signed from row version `version`.
    pub fn cached(&self, version: i64) -> Verdict {
        if self.latest.is_some_and(|change| change.version > version) {
            Verdict::Refused
        } else if self.floor.is_some_and(|floor| floor.version > version) {
            Verdict::Confirm
        } else {
            Verdict::Allowed
        }
    }

    /// Whether a status row read at `version`, by a read that began at `began`, reflects
    /// every change heard of: none above it heard after the read began. One heard before, a
    /// primary read reflects, and a replica's row was checked against it (with
    /// [`ReadStart::UNKNOWN`], which counts every change); so a remembered change above a
    /// primary row heard before the read is another certificate's that shares the key, and
    /// the row is signed rather than refused for good.
    pub fn read_is_current(&self, version: i64, began: ReadStart) -> bool {
        self.latest.is_none_or(|change| change.version <= version || self.latest_heard_by < began.0)
            && self.floor.is_none_or(|floor| floor.version <= version || floor.heard_by < began.0)
    }

    /// When this responder heard of the certificate's latest change (Unix seconds): a date
    /// validator from before then cannot tell a copy with the old status from a new one. For
    /// a certificate that may be among the forgotten changes, the newest of those.
    pub fn changed_at(&self) -> Option<i64> {
        let latest = self.latest.map(|change| change.heard_at);
        let floor = self.floor.map(|floor| floor.heard_at);
        latest.max(floor)
    }
}

/// The log's size and state, for metrics and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub remembered: usize,
    pub limit: usize,
    pub runs: usize,
    /// In force while some forgotten change is not past the horizon.
    pub floor: Option<Floor>,
}

/// The changes heard of, by a keyed hash of issuer and serial (`S` is the hash's key, chosen
/// at random per process; tests choose one that collides).
pub struct ChangeLog<S = RandomState> {
    keys: S,
    limit: usize,
    freeze_at: usize,
    /// The largest run a merge makes: a quarter of the limit, so a merge holds at most that
    /// much twice and an eviction forgets at most that much at once.
    merge_cap: usize,
    /// Read on every answer from a cache, by every worker; written per notification and by
    /// upkeep. Sharded, so that readers on different threads write no common lock word.
    state: ShardedLock<State>,
    /// Whether anything is remembered or forgotten: while not, a lookup takes no lock.
    active: AtomicBool,
    /// One merge or rebuild at a time: a second would only waste its work.
    maintenance: Mutex<()>,
    pub feed: FeedHealth,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog::new(DEFAULT_MAX_REMEMBERED)
    }
}

impl ChangeLog {
    /// A log that remembers at most about `limit` changes.
    pub fn new(limit: usize) -> Self {
        ChangeLog::with_keys(limit, RandomState::new())
    }
}

impl<S: BuildHasher> ChangeLog<S> {
    fn with_keys(limit: usize, keys: S) -> Self {
        let limit = limit.max(1);
        let freeze_at = (limit / 8).clamp(1, FREEZE_AT);
        ChangeLog {
            keys,
            limit,
            freeze_at,
            merge_cap: (limit / 4).max(freeze_at),
            state: ShardedLock::new(State::new()),
            active: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            feed: FeedHealth::default(),
        }
    }

    fn key(&self, issuer_id: i32, serial: &Serial) -> Key {
        self.keys.hash_one((issuer_id, serial))
    }

    fn read(&self) -> ShardedLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// One change: [`ChangeLog::record_all`] of one.
    #[cfg(test)]
    pub fn record(&self, change: &StatusChange, heard_at: i64) {
        self.record_all(std::iter::once((change.issuer_id, &change.serial, change.version)), heard_at);
    }

    /// Remembers changes heard of together at `heard_at` (Unix seconds): a notification's, a
    /// chunk of the catch-up. Each is `(issuer id, serial, version)`; idempotent, the highest
    /// version per certificate wins. One write lock for them all: a mass revocation arrives a
    /// few hundred changes at a time, and taking the lock per change would make the hot path's
    /// lookups wait that many times.
    pub fn record_all<'a>(&self, changes: impl IntoIterator<Item = (i32, &'a Serial, i64)>, heard_at: i64) {
        // A catch-up after a reconnect hears every recent change again: those already
        // remembered cost nothing, and do not push others out.
        let news: Vec<(Key, i64)> = {
            let state = self.read();
            changes
                .into_iter()
                .map(|(issuer_id, serial, version)| (self.key(issuer_id, serial), version))
                .filter(|&(key, version)| state.find(key).is_none_or(|known| known.change.version < version))
                .collect()
        };
        if news.is_empty() {
            return;
        }
        let heard_by = millis_since_epoch(Instant::now());
        let mut news = news.into_iter().peekable();
        // The lock is let go after each freeze, to forget what is over the limit at once, as
        // a single change does: the log never holds more than the limit and a map.
        while news.peek().is_some() {
            let froze = {
                let mut state = self.write();
                let mut froze = false;
                for (key, version) in news.by_ref() {
                    let heard = Recent { change: LatestChange { version, heard_at }, heard_by };
                    if state.insert(key, heard, self.freeze_at) {
                        state.freeze(millis_since_epoch(Instant::now()));
                        froze = true;
                        break;
                    }
                }
                self.active.store(true, Ordering::Release);
                froze
            };
            if froze {
                self.forget_over_limit();
            }
        }
    }

    /// What was heard of this certificate.
    pub fn heard(&self, issuer_id: i32, serial: &Serial) -> Heard {
        if !self.active.load(Ordering::Acquire) {
            return Heard::default();
        }
        let key = self.key(issuer_id, serial);
        let state = self.read();
        let found = state.find(key);
        Heard {
            latest: found.map(|f| f.change),
            latest_heard_by: found.map_or(0, |f| f.heard_by),
            floor: state.floor_for(key),
        }
    }

    /// Periodic upkeep: forgets what was heard of before `before` (Unix seconds), merges
    /// runs, and rebuilds the filter of remembered keys when it no longer fits them.
    pub fn upkeep(&self, before: i64) {
        self.prune(before);
        self.merge();
        self.rebuild_present();
    }

    /// Forgets changes heard of before `before` (Unix seconds): every response read before
    /// them has expired by then, and replica reads lag far less (see [`MAX_REPLICA_LAG`]).
    /// Whole runs go, never entry by entry under the lock (but for the small map).
    pub fn prune(&self, before: i64) {
        if !self.read().has_expired(before) {
            return;
        }
        let (lifted, freed) = {
            let mut state = self.write();
            let had_floor = state.floor().is_some();
            let freed = state.prune(before);
            let active = state.is_active();
            self.active.store(active, Ordering::Release);
            (had_floor && state.floor().is_none(), freed)
        };
        drop(freed);
        if lifted {
            tracing::info!("every forgotten status change is past the horizon: cached responses need no confirmation");
        }
    }

    /// Merges runs until at most `MAX_RUNS` are left. Each merged run is built without the
    /// lock and swapped in under it; a change recorded meanwhile goes to the map or a newer
    /// run, which the swap leaves alone.
    pub fn merge(&self) {
        self.merge_down_to(MAX_RUNS);
    }

    fn merge_down_to(&self, max_runs: usize) {
        let Ok(_alone) = self.maintenance.try_lock() else {
            return;
        };
        loop {
            let pair = self.read().pick_merge(max_runs, self.merge_cap);
            let Some((older, newer)) = pair else {
                return;
            };
            let merged = Arc::new(Run::merge(&older, &newer));
            self.write().install_merge(&older, &newer, &merged);
        }
    }

    /// While more than the limit is remembered, forgets the oldest run. Its keys go into the
    /// filter before the run leaves the log, without the lock: until then the run answers
    /// for them, after that the filter does.
    fn forget_over_limit(&self) {
        loop {
            let next = self.read().over_limit(self.limit);
            let Some((oldest, seen)) = next else {
                return;
            };
            let filter = seen.clone().unwrap_or_else(|| Arc::new(Filter::for_keys(self.limit)));
            filter.insert_all(oldest.keys());
            let mut state = self.write();
            let first = state.floor().is_none();
            if state.forget_oldest(&oldest, &seen, filter) {
                let (floor, remembered) = (state.floor(), state.remembered());
                drop(state);
                if let (true, Some(floor)) = (first, floor) {
                    tracing::warn!(
                        limit = self.limit,
                        remembered,
                        floor = floor.version,
                        "status-change log full (responses.max_remembered_changes): forgetting the oldest changes; \
                         cached responses older than the floor version are served only after the primary confirms them"
                    );
                }
            }
        }
    }

    /// A new filter of remembered keys, sized for them, filled without the lock: it takes new
    /// keys from the start, so it misses none when it is put in force.
    fn rebuild_present(&self) {
        let Ok(_alone) = self.maintenance.try_lock() else {
            return;
        };
        let needs = self.read().present_needs(self.freeze_at);
        let Some(keys) = needs else {
            return;
        };
        let rebuild = self.write().start_rebuild(Arc::new(Filter::for_keys(keys)));
        for run in &rebuild.runs {
            rebuild.filter.insert_all(run.keys());
        }
        rebuild.filter.insert_all(rebuild.recent.iter().copied());
        let old = self.write().finish_rebuild();
        drop(old);
    }

    pub fn summary(&self) -> Summary {
        let state = self.read();
        Summary { remembered: state.remembered(), limit: self.limit, runs: state.runs(), floor: state.floor() }
    }
}

/// How many recent primary WAL positions are kept (one per heartbeat, four a second): about
/// two minutes, twice [`MAX_REPLICA_LAG`].
const POSITIONS: usize = 512;

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
        now.checked_sub(Duration::from_secs(60)).unwrap_or(now)
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

    /// Whether the feed has gone unproven for [`FEED_LOST_AFTER`] (or never was proven).
    pub fn is_lost(&self) -> bool {
        self.proof_age().is_none_or(|age| age >= FEED_LOST_AFTER)
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
