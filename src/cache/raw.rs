//! The raw-request tier: the local tier's front, keyed by a request exactly as it arrived (a
//! GET path, a POST body), so that a request seen before costs one hash lookup: no percent or
//! base64 decoding, no DER decoding, no issuer matching.
//!
//! Raw bytes are a key only here, in-process. rasn decodes leniently and clients spell GET
//! paths many ways, so many byte strings mean one request; the shared Redis tier therefore
//! keys on the decoded (issuer, serial, CertID form), and so does the rest of the local tier.
//! Here each raw key maps to the response of the request it decoded to, so an entry is exactly
//! as right as that response, and the pipeline applies its freshness rules on every hit.
//!
//! Invalidation is exact: every key is filed under its certificate (issuer, serial), and a
//! status change removes all of them, whatever spelling, method or CertID form they were.
//! The map and the per-certificate index live under one lock, so they always hold the same
//! keys. It is a [`ShardedLock`]: a reader locks only its own thread's shard, so the hit path
//! of one worker writes no lock word that another worker's hits write too (with a plain
//! `RwLock`, both workers' hits bounce the lock's cache line between the cores); a change
//! locks every shard, which only misses and status changes do.
//!
//! Bounds: at most `capacity` keys (`cache.local_entries`), evicted in CLOCK order (a key hit
//! since the hand last passed it gets a second chance); at most [`MAX_KEYS_PER_CERTIFICATE`]
//! per certificate, the oldest going first, so that spellings of one certificate cannot crowd
//! out the others; keys longer than [`MAX_KEY_LEN`] bytes are not kept (they are decoded every
//! time). The per-certificate index holds exactly the keys the map holds, so it is bounded by
//! the same `capacity`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use super::local::ResponseId;
use crate::entry::CachedResponse;
use crate::feed::log::KeyHasher;
use crate::issuers::IssuerSet;
use crate::serial::Serial;

/// Longest request kept, in bytes. A request for one CertID without a nonce is about 70 to
/// 110 bytes of DER, 100 to 150 characters of base64, a little more with percent-encoding.
pub const MAX_KEY_LEN: usize = 256;

/// Most keys kept for one certificate: its four CertID forms by GET and POST.
pub const MAX_KEYS_PER_CERTIFICATE: usize = 8;

/// How a request arrived: the key is its path or its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawRequest<'a> {
    /// A GET or HEAD request's path as sent (still percent-encoded, prefix included).
    Get(&'a [u8]),
    /// A POST request's body.
    Post(&'a [u8]),
}

impl<'a> RawRequest<'a> {
    fn parts(self) -> (Method, &'a [u8]) {
        match self {
            RawRequest::Get(bytes) => (Method::Get, bytes),
            RawRequest::Post(bytes) => (Method::Post, bytes),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Method {
    Get,
    Post,
}

/// What a raw key answers with: the response of the request it decoded to.
#[derive(Debug)]
pub struct RawEntry {
    pub id: ResponseId,
    pub response: Arc<CachedResponse>,
    /// The issuer set the request was matched in: the entry answers only while that set is
    /// the one served (an issuer added, changed or retired may match it differently).
    matched_in: Weak<IssuerSet>,
    /// Hit since the CLOCK hand last passed.
    referenced: AtomicBool,
}

impl RawEntry {
    pub fn new(id: ResponseId, response: Arc<CachedResponse>, matched_in: &Arc<IssuerSet>) -> Self {
        RawEntry { id, response, matched_in: Arc::downgrade(matched_in), referenced: AtomicBool::new(false) }
    }

    /// Whether the request was matched in `issuers`. The `Weak` keeps the set's allocation,
    /// so no later set can have its address.
    pub fn matched_in(&self, issuers: &Arc<IssuerSet>) -> bool {
        std::ptr::eq(self.matched_in.as_ptr(), Arc::as_ptr(issuers))
    }
}

/// A key's place in the map: the keyed hash of method and bytes. Two keys with one hash (one
/// chance in 2^64 per pair, and the hash's key is secret) share a place: the later replaces
/// the earlier, which only costs a miss.
type Hash = u64;

struct Slot {
    method: Method,
    key: Box<[u8]>,
    entry: RawEntry,
    /// Which insertion put it there: tells a CLOCK record or an index entry of a key removed
    /// since (and perhaps inserted again) from the current one.
    generation: u64,
}

/// A slot as the index refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Filed {
    hash: Hash,
    generation: u64,
}

type Certificate = (i32, Serial);

struct Index {
    /// Every slot in the map, under its certificate, oldest first.
    by_certificate: HashMap<Certificate, Vec<Filed>>,
    /// The CLOCK: one record per slot, and records of slots removed since, which the hand
    /// skips (compacted when they outnumber the live ones).
    clock: VecDeque<Filed>,
    generations: u64,
}

/// The hash is already a keyed hash: the map uses it as is.
type Map = HashMap<Hash, Slot, BuildHasherDefault<KeyHasher>>;

/// Parts the map is split into: a part grows (rehashes) on its own, under the write lock, so
/// the hits that wait for it wait for a sixteenth of the keys to move, not all of them.
const PARTS: usize = 16;

/// What the lock guards: the map, and the index that files its keys.
struct Keys {
    parts: Box<[Map]>,
    len: usize,
    index: Index,
}

impl Keys {
    fn new() -> Self {
        Keys {
            parts: (0..PARTS).map(|_| Map::default()).collect(),
            len: 0,
            index: Index { by_certificate: HashMap::new(), clock: VecDeque::new(), generations: 0 },
        }
    }

    fn part(hash: Hash) -> usize {
        // Not the bits the maps use for their buckets and tags.
        (hash >> 32) as usize % PARTS
    }

    fn get(&self, hash: Hash) -> Option<&Slot> {
        self.parts[Self::part(hash)].get(&hash)
    }

    /// Takes the slot at `hash` out, only if it is of `generation`, when given.
    fn take(&mut self, hash: Hash, generation: Option<u64>) -> Option<Slot> {
        let part = &mut self.parts[Self::part(hash)];
        match part.get(&hash) {
            Some(slot) if generation.is_none_or(|g| g == slot.generation) => {}
            _ => return None,
        }
        let slot = part.remove(&hash)?;
        self.len -= 1;
        Some(slot)
    }

    /// Puts `slot` at `hash`, which the caller has emptied.
    fn put(&mut self, hash: Hash, slot: Slot) {
        if self.parts[Self::part(hash)].insert(hash, slot).is_none() {
            self.len += 1;
        }
    }

    /// Removes the slot at `hash` (only if it is of `generation`, when given) from the map and
    /// from its certificate's list.
    fn remove_slot(&mut self, hash: Hash, generation: Option<u64>) -> bool {
        let Some(slot) = self.take(hash, generation) else { return false };
        let certificate = (slot.entry.id.issuer_id, slot.entry.id.serial.clone());
        if let Some(filed) = self.index.by_certificate.get_mut(&certificate) {
            filed.retain(|f| f.generation != slot.generation);
            if filed.is_empty() {
                self.index.by_certificate.remove(&certificate);
            }
        }
        true
    }

    /// Moves the CLOCK hand to the first slot not hit since it last passed, and removes it.
    /// False only if nothing is left to evict.
    fn evict_one(&mut self) -> bool {
        while let Some(record) = self.index.clock.pop_front() {
            let referenced = match self.get(record.hash).filter(|slot| slot.generation == record.generation) {
                Some(slot) => slot.entry.referenced.swap(false, Ordering::Relaxed),
                None => continue, // removed since
            };
            if referenced {
                self.index.clock.push_back(record);
            } else if self.remove_slot(record.hash, Some(record.generation)) {
                return true;
            }
        }
        false
    }

    /// Drops the CLOCK records of slots removed since.
    fn compact(&mut self) {
        let mut clock = std::mem::take(&mut self.index.clock);
        clock.retain(|record| self.get(record.hash).is_some_and(|s| s.generation == record.generation));
        self.index.clock = clock;
    }
}

/// The bounded map from raw requests to responses, with its per-certificate index.
pub struct RawTier {
    capacity: usize,
    hashes: RandomState,
    keys: ShardedLock<Keys>,
}

impl RawTier {
    /// A tier of at most `capacity` keys; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        RawTier { capacity, hashes: RandomState::new(), keys: ShardedLock::new(Keys::new()) }
    }

    /// Whether it keeps anything (`cache.local_entries` > 0).
    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn enabled_for(&self, bytes: &[u8]) -> bool {
        self.is_enabled() && bytes.len() <= MAX_KEY_LEN
    }

    fn hash(&self, method: Method, bytes: &[u8]) -> Hash {
        self.hashes.hash_one((method, bytes))
    }

    fn read(&self) -> ShardedLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks this exact request up and, if it is kept, hands its entry to `answer`, under the
    /// read lock (so a hit clones nothing it does not return). `answer` must not call back
    /// into this tier.
    pub fn lookup<R>(&self, request: RawRequest<'_>, answer: impl FnOnce(&RawEntry) -> Option<R>) -> Option<R> {
        let (method, bytes) = request.parts();
        if !self.enabled_for(bytes) {
            return None;
        }
        let hash = self.hash(method, bytes);
        let keys = self.read();
        let slot = keys.get(hash).filter(|slot| slot.method == method && *slot.key == *bytes)?;
        // A load first: a store on every hit would bounce the line between the cores.
        if !slot.entry.referenced.load(Ordering::Relaxed) {
            slot.entry.referenced.store(true, Ordering::Relaxed);
        }
        answer(&slot.entry)
    }

    /// Keeps `entry` as the answer to this exact request, replacing what the request had.
    pub fn insert(&self, request: RawRequest<'_>, entry: RawEntry) {
        let (method, bytes) = request.parts();
        if !self.enabled_for(bytes) {
            return;
        }
        let hash = self.hash(method, bytes);
        let certificate = (entry.id.issuer_id, entry.id.serial.clone());
        let mut keys = self.write();
        keys.remove_slot(hash, None);
        let oldest = keys
            .index
            .by_certificate
            .get(&certificate)
            .filter(|filed| filed.len() >= MAX_KEYS_PER_CERTIFICATE)
            .and_then(|filed| filed.first().copied());
        if let Some(oldest) = oldest {
            keys.remove_slot(oldest.hash, Some(oldest.generation));
        }
        while keys.len >= self.capacity && keys.evict_one() {}
        keys.index.generations += 1;
        let filed = Filed { hash, generation: keys.index.generations };
        keys.put(hash, Slot { method, key: bytes.into(), entry, generation: filed.generation });
        keys.index.by_certificate.entry(certificate).or_default().push(filed);
        keys.index.clock.push_back(filed);
        if keys.index.clock.len() > 2 * keys.len + 1024 {
            keys.compact();
        }
    }

    /// Drops every key of one certificate: every spelling, method and CertID form.
    pub fn remove_certificate(&self, issuer_id: i32, serial: &Serial) {
        if !self.is_enabled() {
            return;
        }
        let mut keys = self.write();
        let Some(filed) = keys.index.by_certificate.remove(&(issuer_id, serial.clone())) else { return };
        for Filed { hash, generation } in filed {
            keys.take(hash, Some(generation));
        }
    }

    /// Keys kept, and certificates they belong to.
    pub fn size(&self) -> (usize, usize) {
        let keys = self.read();
        (keys.len, keys.index.by_certificate.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Facts;
    use crate::ocsp::request::CertIdVariant;

    fn response(tag: u8) -> Arc<CachedResponse> {
        let facts = Facts { revoked: false, status_version: 0, this_update: 0, next_update: 1, not_after: 2 };
        Arc::new(CachedResponse::new(&[0x30, 0x01, tag], facts, "unit").unwrap())
    }

    fn id(issuer_id: i32, serial: &str, variant: CertIdVariant) -> ResponseId {
        ResponseId { issuer_id, serial: Serial::from_hex(serial).unwrap(), variant }
    }

    /// A tier of `capacity`, and an issuer set to match its entries in.
    fn tier(capacity: usize) -> (Arc<IssuerSet>, RawTier) {
        (Arc::new(IssuerSet::default()), RawTier::new(capacity))
    }

    fn entry(issuers: &Arc<IssuerSet>, id: ResponseId) -> RawEntry {
        RawEntry::new(id, response(0), issuers)
    }

    /// The map and the index agree: the same keys, each filed once under its certificate,
    /// each with one live CLOCK record.
    fn assert_consistent(tier: &RawTier) {
        let keys = tier.read();
        let mut in_map: Vec<_> = keys
            .parts
            .iter()
            .flat_map(|part| part.iter())
            .map(|(hash, slot)| (slot.entry.id.issuer_id, slot.entry.id.serial.clone(), *hash, slot.generation))
            .collect();
        let index = &keys.index;
        let mut filed: Vec<_> = index
            .by_certificate
            .iter()
            .flat_map(|((issuer, serial), list)| list.iter().map(|f| (*issuer, serial.clone(), f.hash, f.generation)))
            .collect();
        in_map.sort();
        filed.sort();
        assert_eq!(in_map, filed, "map and index disagree");
        assert!(index.by_certificate.values().all(|list| !list.is_empty() && list.len() <= MAX_KEYS_PER_CERTIFICATE));
        let live: Vec<_> = filed.iter().map(|(_, _, h, g)| Filed { hash: *h, generation: *g }).collect();
        for f in &live {
            assert_eq!(index.clock.iter().filter(|r| *r == f).count(), 1, "one CLOCK record per slot");
        }
        assert_eq!(keys.len, in_map.len());
        assert!(keys.len <= tier.capacity);
    }

    /// The entry's certificate, if this exact request is kept.
    fn kept(tier: &RawTier, request: RawRequest<'_>) -> Option<(i32, String)> {
        tier.lookup(request, |entry| Some((entry.id.issuer_id, entry.id.serial.to_string())))
    }

    /// Every spelling, method and CertID form one client population sends for one certificate.
    fn forms(serial: &str) -> Vec<(RawRequest<'static>, CertIdVariant)> {
        let leak = |s: String| -> &'static [u8] { Box::leak(s.into_bytes().into_boxed_slice()) };
        vec![
            (RawRequest::Get(leak(format!("/MFEw+{serial}/x="))), CertIdVariant::Sha1Null),
            (RawRequest::Get(leak(format!("/MFEw%2B{serial}%2Fx%3D"))), CertIdVariant::Sha1Null),
            (RawRequest::Get(leak(format!("//MFEw+{serial}/x"))), CertIdVariant::Sha1Null),
            (RawRequest::Get(leak(format!("/MFEw {serial}/x="))), CertIdVariant::Sha1Null),
            (RawRequest::Post(leak(format!("0Q0O-{serial}-sha1"))), CertIdVariant::Sha1Null),
            (RawRequest::Get(leak(format!("/MGsw+{serial}/y="))), CertIdVariant::Sha256Null),
            (RawRequest::Post(leak(format!("0k0i-{serial}-sha256-absent"))), CertIdVariant::Sha256Absent),
        ]
    }

    #[test]
    fn a_status_change_removes_every_key_of_the_certificate_and_nothing_else() {
        let (issuers, tier) = tier(100);
        for serial in ["0a01", "0a02"] {
            for (request, variant) in forms(serial) {
                tier.insert(request, entry(&issuers, id(1, serial, variant)));
            }
        }
        // The same serial under another issuer is another certificate.
        let (other_issuer, _) = forms("0a01")[0];
        let other_issuer = match other_issuer {
            RawRequest::Get(bytes) => RawRequest::Get(&bytes[1..]),
            post => post,
        };
        tier.insert(other_issuer, entry(&issuers, id(2, "0a01", CertIdVariant::Sha1Null)));
        let per_certificate = forms("0a01").len();
        assert_eq!(tier.size(), (2 * per_certificate + 1, 3));
        assert_consistent(&tier);

        tier.remove_certificate(1, &Serial::from_hex("0a01").unwrap());
        for (request, _) in forms("0a01") {
            assert!(kept(&tier, request).is_none(), "{request:?} survived the change");
        }
        for (request, _) in forms("0a02") {
            assert_eq!(kept(&tier, request).map(|(_, serial)| serial), Some("0a02".into()), "{request:?}");
        }
        assert!(kept(&tier, other_issuer).is_some(), "another issuer's certificate of the same serial stays");
        assert_eq!(tier.size(), (per_certificate + 1, 2));
        assert_consistent(&tier);
        // Nothing to remove is not an error, and removes nothing.
        tier.remove_certificate(1, &Serial::from_hex("0a01").unwrap());
        tier.remove_certificate(9, &Serial::from_hex("0a02").unwrap());
        assert_eq!(tier.size(), (per_certificate + 1, 2));
    }

    #[test]
    fn a_get_path_and_a_post_body_of_the_same_bytes_are_different_keys() {
        let (issuers, tier) = tier(10);
        tier.insert(RawRequest::Get(b"same"), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        assert!(kept(&tier, RawRequest::Post(b"same")).is_none());
        tier.insert(RawRequest::Post(b"same"), entry(&issuers, id(1, "02", CertIdVariant::Sha1Null)));
        assert_eq!(kept(&tier, RawRequest::Get(b"same")).unwrap().1, "01");
        assert_eq!(kept(&tier, RawRequest::Post(b"same")).unwrap().1, "02");
        assert_consistent(&tier);
    }

    #[test]
    fn replacing_a_key_refiles_it_under_its_new_certificate() {
        let (issuers, tier) = tier(10);
        let request = RawRequest::Get(b"/MFEw");
        tier.insert(request, entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        // The issuer set changed and the same bytes now match issuer 2.
        tier.insert(request, entry(&issuers, id(2, "01", CertIdVariant::Sha1Null)));
        assert_eq!(tier.size(), (1, 1));
        assert_consistent(&tier);
        tier.remove_certificate(1, &Serial::from_hex("01").unwrap());
        assert_eq!(kept(&tier, request).unwrap().0, 2, "issuer 1 no longer owns the key");
        tier.remove_certificate(2, &Serial::from_hex("01").unwrap());
        assert!(kept(&tier, request).is_none());
        assert_eq!(tier.size(), (0, 0));
        assert_consistent(&tier);
    }

    #[test]
    fn capacity_bounds_keys_and_the_index_and_eviction_keeps_them_consistent() {
        let (issuers, tier) = tier(50);
        let hot: Vec<String> = (0..10).map(|i| format!("/hot/{i}")).collect();
        for round in 0..40 {
            for (i, path) in hot.iter().enumerate() {
                if round == 0 {
                    tier.insert(
                        RawRequest::Get(path.as_bytes()),
                        entry(&issuers, id(1, &format!("{i:x}1"), CertIdVariant::Sha1Null)),
                    );
                }
                assert!(
                    kept(&tier, RawRequest::Get(path.as_bytes())).is_some(),
                    "hot key {path} evicted in round {round}"
                );
            }
            // A flood of keys asked once each, some for the same certificates.
            for j in 0..20 {
                let path = format!("/cold/{round}/{j}");
                tier.insert(
                    RawRequest::Get(path.as_bytes()),
                    entry(&issuers, id(1, &format!("{:x}2", j % 7), CertIdVariant::Sha1Null)),
                );
            }
            assert_consistent(&tier);
        }
        let (keys, certificates) = tier.size();
        assert_eq!(keys, 50);
        assert!(certificates <= 50);
        // Removing every certificate empties both.
        for i in 0..10 {
            tier.remove_certificate(1, &Serial::from_hex(&format!("{i:x}1")).unwrap());
        }
        for j in 0..7 {
            tier.remove_certificate(1, &Serial::from_hex(&format!("{j:x}2")).unwrap());
        }
        assert_eq!(tier.size(), (0, 0));
        assert_consistent(&tier);
    }

    #[test]
    fn one_certificate_keeps_at_most_its_share_of_spellings() {
        let (issuers, tier) = tier(1000);
        let paths: Vec<String> = (0..100).map(|n| format!("{}MFEw", "/".repeat(n + 1))).collect();
        for path in &paths {
            tier.insert(RawRequest::Get(path.as_bytes()), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        }
        assert_eq!(tier.size(), (MAX_KEYS_PER_CERTIFICATE, 1));
        for path in &paths[..paths.len() - MAX_KEYS_PER_CERTIFICATE] {
            assert!(kept(&tier, RawRequest::Get(path.as_bytes())).is_none(), "older spellings go first");
        }
        for path in &paths[paths.len() - MAX_KEYS_PER_CERTIFICATE..] {
            assert!(kept(&tier, RawRequest::Get(path.as_bytes())).is_some());
        }
        assert_consistent(&tier);
        // Many removals and re-insertions leave no CLOCK records behind to grow without bound.
        for _ in 0..2000 {
            tier.remove_certificate(1, &Serial::from_hex("01").unwrap());
            tier.insert(RawRequest::Get(b"/MFEw"), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        }
        let keys = tier.size().0;
        assert!(tier.read().index.clock.len() <= 2 * keys + 1024 + 1);
        assert_consistent(&tier);
    }

    #[test]
    fn long_keys_and_a_disabled_tier_keep_nothing() {
        let (issuers, tier) = tier(10);
        let long = vec![b'A'; MAX_KEY_LEN + 1];
        tier.insert(RawRequest::Get(&long), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        assert!(kept(&tier, RawRequest::Get(&long)).is_none());
        assert_eq!(tier.size(), (0, 0));
        let off = RawTier::new(0);
        off.insert(RawRequest::Get(b"/x"), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        assert!(kept(&off, RawRequest::Get(b"/x")).is_none());
        off.remove_certificate(1, &Serial::from_hex("01").unwrap());
        assert_eq!(off.size(), (0, 0));
    }

    #[test]
    fn an_entry_answers_only_for_the_issuer_set_it_was_matched_in() {
        let first = Arc::new(IssuerSet::default());
        let second = Arc::new(IssuerSet::default());
        let entry = entry(&first, id(1, "01", CertIdVariant::Sha1Null));
        assert!(entry.matched_in(&first));
        assert!(!entry.matched_in(&second));
        drop(first);
        // The old set's allocation is held by the entry: a new set cannot take its address.
        let third = Arc::new(IssuerSet::default());
        assert!(!entry.matched_in(&third));
    }
}
