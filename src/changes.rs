//! Recent status changes, as heard from Postgres notifications.
//!
//! Purging Redis on revocation is not enough on its own: a purge can fail, and a response
//! whose status was read just before the revocation committed can be written to Redis just
//! after the purge. So every responder remembers each change for as long as a response
//! signed before it could still be valid (the response validity), and refuses to serve a
//! cached response whose status disagrees with the change and was read before
//! `changed_at + CHANGE_MARGIN`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::notify::StatusChange;
use crate::serial::Serial;

/// Slack for the clocks involved: a change is recorded with the time this responder heard of
/// it (see `listener`), compared with read times stamped by Postgres (possibly a replica).
/// A status read up to this long after that time is still treated as possibly older.
pub const CHANGE_MARGIN_MICROS: i64 = 5_000_000;

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Change {
    issuer_id: i32,
    changed_at_micros: i64,
    revoked: bool,
}

/// The set of recent changes, sharded so concurrent readers rarely share a lock.
pub struct ChangeLog {
    shards: [RwLock<HashMap<Serial, Vec<Change>>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    entries: AtomicUsize,
    /// False while the notification listener is disconnected: changes may be missed then, so
    /// cached responses must be checked against Postgres before they are served.
    listening: AtomicBool,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            hasher: Default::default(),
            entries: AtomicUsize::new(0),
            listening: AtomicBool::new(false),
        }
    }
}

impl ChangeLog {
    fn shard(&self, serial: &Serial) -> &RwLock<HashMap<Serial, Vec<Change>>> {
        &self.shards[self.hasher.hash_one(serial) as usize % SHARDS]
    }

    /// Remembers a change (idempotent; the latest change per certificate wins).
    pub fn record(&self, change: &StatusChange) {
        let entry = Change {
            issuer_id: change.issuer_id,
            changed_at_micros: change.changed_at.timestamp_micros(),
            revoked: change.revoked,
        };
        let mut shard = self.shard(&change.serial).write().unwrap_or_else(|p| p.into_inner());
        let list = shard.entry(change.serial.clone()).or_default();
        match list.iter_mut().find(|c| c.issuer_id == change.issuer_id) {
            Some(existing) if existing.changed_at_micros <= entry.changed_at_micros => *existing = entry,
            Some(_) => {}
            None => {
                list.push(entry);
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether a cached response saying `revoked`, whose status was read at `read_at_micros`,
    /// is still consistent with every change heard of.
    pub fn allows(&self, issuer_id: i32, serial: &Serial, revoked: bool, read_at_micros: i64) -> bool {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let shard = self.shard(serial).read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = shard.get(serial) else { return true };
        list.iter()
            .filter(|c| c.issuer_id == issuer_id)
            .all(|c| c.revoked == revoked || read_at_micros >= c.changed_at_micros.saturating_add(CHANGE_MARGIN_MICROS))
    }

    /// Forgets changes made before `before_micros`: every response read before them has
    /// expired by then.
    pub fn prune(&self, before_micros: i64) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, list| {
                let before = list.len();
                list.retain(|c| c.changed_at_micros >= before_micros);
                self.entries.fetch_sub(before - list.len(), Ordering::Relaxed);
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

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    /// Whether notifications are flowing, so that the log can be trusted on its own.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn change(issuer_id: i32, serial: &str, revoked: bool, at_micros: i64) -> StatusChange {
        StatusChange {
            issuer_id,
            serial: Serial::from_hex(serial).unwrap(),
            revoked,
            changed_at: DateTime::from_timestamp_micros(at_micros).unwrap(),
        }
    }

    #[test]
    fn a_good_read_before_a_revocation_is_refused() {
        let log = ChangeLog::default();
        let serial = Serial::from_hex("abcd").unwrap();
        let t = 1_000_000_000_000;
        assert!(log.allows(1, &serial, false, t - 1));
        log.record(&change(1, "abcd", true, t));
        assert!(!log.allows(1, &serial, false, t - 1), "read before the change");
        assert!(!log.allows(1, &serial, false, t + CHANGE_MARGIN_MICROS - 1), "read within the margin");
        assert!(log.allows(1, &serial, false, t + CHANGE_MARGIN_MICROS), "read well after: the row said good again");
        assert!(log.allows(1, &serial, true, t - 1), "a revoked answer agrees with the change");
        assert!(log.allows(2, &serial, false, t - 1), "another issuer's certificate");
        assert!(log.allows(1, &Serial::from_hex("abce").unwrap(), false, t - 1));
    }

    #[test]
    fn latest_change_wins_and_prune_forgets() {
        let log = ChangeLog::default();
        let serial = Serial::from_hex("01").unwrap();
        log.record(&change(1, "01", true, 100));
        log.record(&change(1, "01", false, 200));
        log.record(&change(1, "01", true, 150));
        assert_eq!(log.len(), 1);
        assert!(!log.allows(1, &serial, true, 199), "unrevoked at 200");
        log.prune(201);
        assert!(log.is_empty());
        assert!(log.allows(1, &serial, true, 199));
    }
}
