//! The storage behind [`super::ChangeLog`]: the latest changes in a small map, older ones in
//! immutable runs sorted by key, a filter of every key remembered, and what was forgotten
//! when the log was full.
//!
//! Every method here runs under the log's lock and costs at most O(runs), a few cache misses
//! per run, or O(size of the map); the O(n) work (merging runs, filling filters) is done by
//! the log without the lock, on runs that cannot change.

use std::cmp::Ordering;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::filter::Filter;
use super::{Floor, LatestChange};

/// A change in the map: its version, when it was heard (Unix seconds), and that moment on
/// `FeedHealth`'s millisecond clock.
#[derive(Clone, Copy)]
pub(super) struct Recent {
    pub change: LatestChange,
    pub heard_by: u64,
}

/// A certificate's key: a keyed 64-bit hash of its issuer and serial (see `ChangeLog::key`).
pub(super) type Key = u64;

/// Changes frozen together: sorted by key, one entry per key (its highest version), 16 bytes
/// each, plus an index of about one byte per entry.
pub(super) struct Run {
    entries: Box<[(Key, i64)]>,
    /// `entries[starts[b]..starts[b + 1]]` are the keys whose top bits are `b`: about four,
    /// as keys are uniform, so a search is a cache miss or two rather than a binary search's
    /// twenty.
    starts: Box<[u32]>,
    /// 64 minus the number of top bits `starts` is indexed by.
    shift: u32,
    /// The newest `heard_at` among them (Unix seconds): the run is kept until that is past the
    /// horizon, so every change in it is kept at least as long as it must be.
    newest_heard_at: i64,
    /// When the run was frozen, on `FeedHealth`'s millisecond clock: every change in it had
    /// been heard by then.
    heard_by: u64,
    max_version: i64,
}

impl Run {
    fn new(entries: Vec<(Key, i64)>, newest_heard_at: i64, heard_by: u64, max_version: i64) -> Run {
        // A run holds at most a quarter of `responses.max_remembered_changes` (at most a
        // billion), so its positions fit in a u32.
        let buckets = (entries.len() / 4).max(1).ilog2();
        let shift = 64 - buckets;
        let mut starts = Vec::with_capacity((1 << buckets) + 1);
        let mut at = 0;
        for bucket in 0..=(1u64 << buckets) {
            while entries.get(at).is_some_and(|&(key, _)| key.checked_shr(shift).unwrap_or(0) < bucket) {
                at += 1;
            }
            starts.push(at as u32);
        }
        Run {
            entries: entries.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
            shift,
            newest_heard_at,
            heard_by,
            max_version,
        }
    }

    fn version(&self, key: Key) -> Option<i64> {
        let bucket = key.checked_shr(self.shift).unwrap_or(0) as usize;
        let (from, to) = (*self.starts.get(bucket)? as usize, *self.starts.get(bucket + 1)? as usize);
        let entries = self.entries.get(from..to)?;
        entries.binary_search_by_key(&key, |&(k, _)| k).ok().map(|i| entries[i].1)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.entries.iter().map(|&(key, _)| key)
    }

    /// One run holding both, with the higher version where they share a key. Needs no lock:
    /// runs never change once frozen.
    pub(super) fn merge(older: &Run, newer: &Run) -> Run {
        let (a, b) = (&older.entries, &newer.entries);
        let mut entries = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    entries.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    entries.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    entries.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        entries.extend_from_slice(&a[i..]);
        entries.extend_from_slice(&b[j..]);
        Run::new(
            entries,
            older.newest_heard_at.max(newer.newest_heard_at),
            older.heard_by.max(newer.heard_by),
            older.max_version.max(newer.max_version),
        )
    }
}

impl Floor {
    /// The floor once `run` is forgotten too.
    fn covering(previous: Option<Floor>, run: &Run) -> Floor {
        let floor = Floor { version: run.max_version, heard_at: run.newest_heard_at, heard_by: run.heard_by };
        match previous {
            None => floor,
            Some(p) => Floor {
                version: p.version.max(floor.version),
                heard_at: p.heard_at.max(floor.heard_at),
                heard_by: p.heard_by.max(floor.heard_by),
            },
        }
    }
}

/// Keys are already uniform keyed hashes: the map uses them as they are rather than hashing
/// them again. (The raw-request tier's shards too, `cache::raw`.)
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// What a rebuild of the filter of remembered keys starts from: the new filter, already in
/// force for new keys, and every key remembered when it was put there.
pub(super) struct Rebuild {
    pub filter: Arc<Filter>,
    pub runs: Vec<Arc<Run>>,
    pub recent: Vec<Key>,
}

#[derive(Default)]
pub(super) struct State {
    /// The changes heard since the last freeze, with their own `heard_at`.
    recent: HashMap<Key, Recent, BuildHasherDefault<KeyHasher>>,
    /// No change in `recent` was heard before this (`i64::MAX` when it is empty): pruning
    /// looks into the map only when something in it may have expired.
    recent_oldest: i64,
    /// Oldest first. A merge replaces two neighbours by one, so the order holds.
    runs: Vec<Arc<Run>>,
    /// Entries in `recent` and in every run (a key in several counts in each).
    remembered: usize,
    /// Holds every key in `recent` and the runs (and some no longer there): a lookup for a
    /// key it does not hold searches nothing.
    present: Option<Arc<Filter>>,
    /// While `present` is rebuilt: the new filter, which new keys go to as well.
    next_present: Option<Arc<Filter>>,
    /// Keys dropped (pruned, forgotten) since `present` was built: bits it holds for nothing.
    dropped: usize,
    floor: Option<Floor>,
    /// The keys of every forgotten change, while `floor` is in force.
    forgotten: Option<Arc<Filter>>,
}

impl State {
    pub(super) fn new() -> Self {
        State { recent_oldest: i64::MAX, ..State::default() }
    }

    /// The highest version remembered for `key`, with the newest `heard_at` and `heard_by`
    /// of the places it was found in (a run's are its newest change's: later, so never a 304
    /// or a signature too many).
    pub(super) fn find(&self, key: Key) -> Option<Recent> {
        if !self.present.as_ref().is_some_and(|present| present.may_hold(key)) {
            return None;
        }
        let mut found = self.recent.get(&key).copied();
        for run in &self.runs {
            if let Some(version) = run.version(key) {
                let (heard_at, heard_by) = (run.newest_heard_at, run.heard_by);
                found = Some(match found {
                    Some(f) => Recent {
                        change: LatestChange {
                            version: f.change.version.max(version),
                            heard_at: f.change.heard_at.max(heard_at),
                        },
                        heard_by: f.heard_by.max(heard_by),
                    },
                    None => Recent { change: LatestChange { version, heard_at }, heard_by },
                });
            }
        }
        found
    }

    /// The floor, if `key` may be among the forgotten changes.
    pub(super) fn floor_for(&self, key: Key) -> Option<Floor> {
        self.floor.filter(|_| self.forgotten.as_ref().is_none_or(|forgotten| forgotten.may_hold(key)))
    }

    /// Remembers a change in the map; returns whether the map has reached `freeze_at`.
    pub(super) fn insert(&mut self, key: Key, heard: Recent, freeze_at: usize) -> bool {
        let change = heard.change;
        match self.recent.entry(key) {
            Entry::Occupied(mut known) if known.get().change.version < change.version => {
                known.insert(heard);
            }
            Entry::Occupied(_) => return false,
            Entry::Vacant(slot) => {
                slot.insert(heard);
                self.remembered += 1;
            }
        }
        let present = self.present.get_or_insert_with(|| Arc::new(Filter::for_keys(freeze_at)));
        present.insert(key);
        if let Some(next) = &self.next_present {
            next.insert(key);
        }
        self.recent_oldest = self.recent_oldest.min(change.heard_at);
        self.recent.len() >= freeze_at
    }

    /// Turns the map into a run (a few thousand entries: sorting them takes well under a
    /// millisecond).
    pub(super) fn freeze(&mut self, heard_by: u64) {
        if self.recent.is_empty() {
            return;
        }
        let mut newest_heard_at = i64::MIN;
        let mut max_version = i64::MIN;
        let mut entries = Vec::with_capacity(self.recent.len());
        for (key, Recent { change, .. }) in self.recent.drain() {
            newest_heard_at = newest_heard_at.max(change.heard_at);
            max_version = max_version.max(change.version);
            entries.push((key, change.version));
        }
        entries.sort_unstable_by_key(|&(key, _)| key);
        self.runs.push(Arc::new(Run::new(entries, newest_heard_at, heard_by, max_version)));
        self.recent_oldest = i64::MAX;
    }

    /// The two neighbouring runs to merge next, if there are more than `max_runs`: the pair
    /// with the fewest entries together, at most `cap` (which bounds the memory a merge
    /// holds twice, and how much one eviction forgets).
    pub(super) fn pick_merge(&self, max_runs: usize, cap: usize) -> Option<(Arc<Run>, Arc<Run>)> {
        if self.runs.len() <= max_runs {
            return None;
        }
        let size = |i: usize| self.runs[i].len() + self.runs[i + 1].len();
        let i = (0..self.runs.len() - 1).filter(|&i| size(i) <= cap).min_by_key(|&i| size(i))?;
        Some((self.runs[i].clone(), self.runs[i + 1].clone()))
    }

    /// Puts `merged` in place of `older` and `newer`, if they are still neighbours (a prune
    /// or an eviction may have dropped one meanwhile; then the merge is wasted, not wrong).
    /// Changes recorded meanwhile are in the map or in later runs, untouched.
    pub(super) fn install_merge(&mut self, older: &Arc<Run>, newer: &Arc<Run>, merged: &Arc<Run>) -> bool {
        let neighbours = |w: &[Arc<Run>]| Arc::ptr_eq(&w[0], older) && Arc::ptr_eq(&w[1], newer);
        let Some(i) = self.runs.windows(2).position(neighbours) else {
            return false;
        };
        self.remembered = self.remembered - older.len() - newer.len() + merged.len();
        self.runs[i] = merged.clone();
        self.runs.remove(i + 1);
        true
    }

    /// The oldest run and the filter of forgotten keys, if more than `limit` changes are
    /// remembered.
    pub(super) fn over_limit(&self, limit: usize) -> Option<(Arc<Run>, Option<Arc<Filter>>)> {
        if self.remembered <= limit {
            return None;
        }
        Some((self.runs.first()?.clone(), self.forgotten.clone()))
    }

    /// Forgets `oldest`, whose keys `forgotten` now holds, if it is still the oldest run and
    /// the filter in force is still `seen` (else the caller starts again).
    pub(super) fn forget_oldest(
        &mut self,
        oldest: &Arc<Run>,
        seen: &Option<Arc<Filter>>,
        forgotten: Arc<Filter>,
    ) -> bool {
        let same_filter = match (&self.forgotten, seen) {
            (None, None) => true,
            (Some(current), Some(seen)) => Arc::ptr_eq(current, seen),
            _ => false,
        };
        if !same_filter || !self.runs.first().is_some_and(|first| Arc::ptr_eq(first, oldest)) {
            return false;
        }
        self.runs.remove(0);
        self.remembered -= oldest.len();
        self.dropped += oldest.len();
        self.floor = Some(Floor::covering(self.floor, oldest));
        self.forgotten = Some(forgotten);
        true
    }

    /// Whether [`State::prune`] has anything to do.
    pub(super) fn has_expired(&self, before: i64) -> bool {
        self.recent_oldest < before
            || self.runs.iter().any(|run| run.newest_heard_at < before)
            || self.floor.is_some_and(|floor| floor.heard_at < before)
    }

    /// Drops every run, map entry and floor heard of before `before`; returns what to free
    /// once the lock is released.
    pub(super) fn prune(&mut self, before: i64) -> (Vec<Arc<Run>>, Option<Arc<Filter>>) {
        let (expired, kept): (Vec<_>, Vec<_>) = self.runs.drain(..).partition(|run| run.newest_heard_at < before);
        self.runs = kept;
        let mut dropped = expired.iter().map(|run| run.len()).sum::<usize>();
        if self.recent_oldest < before {
            let len = self.recent.len();
            self.recent.retain(|_, recent| recent.change.heard_at >= before);
            dropped += len - self.recent.len();
            self.recent_oldest = self.recent.values().map(|recent| recent.change.heard_at).min().unwrap_or(i64::MAX);
        }
        self.remembered -= dropped;
        self.dropped += dropped;
        let mut forgotten = None;
        if self.floor.is_some_and(|floor| floor.heard_at < before) {
            self.floor = None;
            forgotten = self.forgotten.take();
        }
        (expired, forgotten)
    }

    /// The size of a new filter of remembered keys, if the one in force is too full, much too
    /// large, or holds more dropped keys than remembered ones; none is needed while nothing is
    /// remembered.
    pub(super) fn present_needs(&self, freeze_at: usize) -> Option<usize> {
        let present = self.present.as_ref()?;
        let keys = self.remembered.max(freeze_at);
        let stale = present.capacity() < self.remembered
            || present.capacity() > 4 * keys.next_power_of_two()
            || self.dropped > self.remembered;
        (stale && self.next_present.is_none()).then_some(keys + keys / 4)
    }

    /// Puts `filter` in force for new keys; the caller fills it with the keys returned.
    pub(super) fn start_rebuild(&mut self, filter: Arc<Filter>) -> Rebuild {
        self.next_present = Some(filter.clone());
        self.dropped = 0;
        Rebuild { filter, runs: self.runs.clone(), recent: self.recent.keys().copied().collect() }
    }

    /// Puts the filled filter in force for lookups too.
    pub(super) fn finish_rebuild(&mut self) -> Option<Arc<Filter>> {
        let next = self.next_present.take()?;
        self.present.replace(next)
    }

    /// Whether a lookup has anything to look at; when not, the filters go too.
    pub(super) fn is_active(&mut self) -> bool {
        if self.remembered == 0 && self.next_present.is_none() {
            self.present = None;
            self.dropped = 0;
        }
        self.remembered > 0 || self.floor.is_some()
    }

    pub(super) fn remembered(&self) -> usize {
        self.remembered
    }

    pub(super) fn runs(&self) -> usize {
        self.runs.len()
    }

    pub(super) fn floor(&self) -> Option<Floor> {
        self.floor
    }
}
