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
//! One lock (`index`) orders every change: insertion, eviction and removal take it before a
//! shard's, so the shards and the per-certificate index always hold the same keys. The hit
//! path takes only a shard's read lock.
//!
//! Bounds: at most `capacity` keys (`cache.local_entries`), evicted in CLOCK order (a key hit
//! since the hand last passed it gets a second chance); at most [`MAX_KEYS_PER_CERTIFICATE`]
//! per certificate, the oldest going first, so that spellings of one certificate cannot crowd
//! out the others; keys longer than [`MAX_KEY_LEN`] bytes are not kept (they are decoded every
//! time). The per-certificate index holds exactly the keys the shards hold, so it is bounded
//! by the same `capacity`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

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

/// Read-lock shards: the hit path of two workers rarely meets on one.
const SHARDS: usize = 16;

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

/// A key's place in a shard: the keyed hash of method and bytes. Two keys with one hash (one
/// chance in 2^64 per pair, and the hash's key is secret) share a place: the later replaces
/// the earlier, which only costs a miss.
type Hash = u64;

struct Slot {
    method: Method,
    key: Box<[u8]>,
    entry: Arc<RawEntry>,
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

#[derive(Default)]
struct Index {
    /// Every slot in the shards, under its certificate, oldest first.
    by_certificate: HashMap<Certificate, Vec<Filed>>,
    /// The CLOCK: one record per slot, and records of slots removed since, which the hand
    /// skips (compacted when they outnumber the live ones).
    clock: VecDeque<Filed>,
    len: usize,
    generations: u64,
}

/// The hash is already a keyed hash: the shard maps use it as is.
type Shard = HashMap<Hash, Slot, BuildHasherDefault<KeyHasher>>;

/// The bounded map from raw requests to responses, with its per-certificate index.
pub struct RawTier {
    capacity: usize,
    keys: RandomState,
    shards: Box<[RwLock<Shard>]>,
    index: Mutex<Index>,
}

impl RawTier {
    /// A tier of at most `capacity` keys; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        let shards = if capacity == 0 { 0 } else { SHARDS };
        RawTier {
            capacity,
            keys: RandomState::new(),
            shards: (0..shards).map(|_| RwLock::new(Shard::default())).collect(),
            index: Mutex::new(Index::default()),
        }
    }

    /// Whether it keeps anything (`cache.local_entries` > 0).
    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn enabled_for(&self, bytes: &[u8]) -> bool {
        self.is_enabled() && bytes.len() <= MAX_KEY_LEN
    }

    fn hash(&self, method: Method, bytes: &[u8]) -> Hash {
        self.keys.hash_one((method, bytes))
    }

    fn shard(&self, hash: Hash) -> &RwLock<Shard> {
        // Not the bits the map uses for its buckets and tags.
        &self.shards[(hash >> 32) as usize % self.shards.len()]
    }

    fn read(&self, hash: Hash) -> RwLockReadGuard<'_, Shard> {
        self.shard(hash).read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, hash: Hash) -> RwLockWriteGuard<'_, Shard> {
        self.shard(hash).write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry this exact request was last answered with, if it is kept.
    pub fn get(&self, request: RawRequest<'_>) -> Option<Arc<RawEntry>> {
        let (method, bytes) = request.parts();
        if !self.enabled_for(bytes) {
            return None;
        }
        let hash = self.hash(method, bytes);
        let entry = {
            let shard = self.read(hash);
            let slot = shard.get(&hash).filter(|slot| slot.method == method && *slot.key == *bytes)?;
            slot.entry.clone()
        };
        // A load first: a store on every hit would bounce the line between the cores.
        if !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        Some(entry)
    }

    /// Keeps `entry` as the answer to this exact request, replacing what the request had.
    pub fn insert(&self, request: RawRequest<'_>, entry: RawEntry) {
        let (method, bytes) = request.parts();
        if !self.enabled_for(bytes) {
            return;
        }
        let hash = self.hash(method, bytes);
        let certificate = (entry.id.issuer_id, entry.id.serial.clone());
        let mut index = self.lock();
        self.remove_slot(&mut index, hash, None);
        let oldest = index
            .by_certificate
            .get(&certificate)
            .filter(|filed| filed.len() >= MAX_KEYS_PER_CERTIFICATE)
            .and_then(|filed| filed.first().copied());
        if let Some(oldest) = oldest {
            self.remove_slot(&mut index, oldest.hash, Some(oldest.generation));
        }
        while index.len >= self.capacity && self.evict_one(&mut index) {}
        index.generations += 1;
        let filed = Filed { hash, generation: index.generations };
        let slot = Slot { method, key: bytes.into(), entry: Arc::new(entry), generation: filed.generation };
        self.write(hash).insert(hash, slot);
        index.by_certificate.entry(certificate).or_default().push(filed);
        index.clock.push_back(filed);
        index.len += 1;
        if index.clock.len() > 2 * index.len + 1024 {
            self.compact(&mut index);
        }
    }

    /// Drops every key of one certificate: every spelling, method and CertID form.
    pub fn remove_certificate(&self, issuer_id: i32, serial: &Serial) {
        if self.capacity == 0 {
            return;
        }
        let mut index = self.lock();
        let Some(filed) = index.by_certificate.remove(&(issuer_id, serial.clone())) else { return };
        for Filed { hash, generation } in filed {
            let mut shard = self.write(hash);
            if shard.get(&hash).is_some_and(|slot| slot.generation == generation) {
                shard.remove(&hash);
                index.len -= 1;
            }
        }
    }

    /// Keys kept, and certificates they belong to.
    pub fn size(&self) -> (usize, usize) {
        let index = self.lock();
        (index.len, index.by_certificate.len())
    }

    /// Removes the slot at `hash` (only if it is of `generation`, when given) from its shard
    /// and from its certificate's list. The caller holds the index.
    fn remove_slot(&self, index: &mut Index, hash: Hash, generation: Option<u64>) -> bool {
        let removed = {
            let mut shard = self.write(hash);
            match shard.get(&hash) {
                Some(slot) if generation.is_none_or(|g| g == slot.generation) => shard.remove(&hash),
                _ => None,
            }
        };
        let Some(slot) = removed else { return false };
        index.len -= 1;
        let certificate = (slot.entry.id.issuer_id, slot.entry.id.serial.clone());
        if let Some(filed) = index.by_certificate.get_mut(&certificate) {
            filed.retain(|f| f.generation != slot.generation);
            if filed.is_empty() {
                index.by_certificate.remove(&certificate);
            }
        }
        true
    }

    /// Moves the CLOCK hand to the first slot not hit since it last passed, and removes it.
    /// False only if nothing is left to evict.
    fn evict_one(&self, index: &mut Index) -> bool {
        while let Some(record) = index.clock.pop_front() {
            let referenced = {
                let shard = self.read(record.hash);
                match shard.get(&record.hash).filter(|slot| slot.generation == record.generation) {
                    Some(slot) => slot.entry.referenced.swap(false, Ordering::Relaxed),
                    None => continue, // removed since
                }
            };
            if referenced {
                index.clock.push_back(record);
            } else if self.remove_slot(index, record.hash, Some(record.generation)) {
                return true;
            }
        }
        false
    }

    /// Drops the CLOCK records of slots removed since.
    fn compact(&self, index: &mut Index) {
        let clock = std::mem::take(&mut index.clock);
        index.clock = clock
            .into_iter()
            .filter(|record| {
                self.read(record.hash).get(&record.hash).is_some_and(|s| s.generation == record.generation)
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Facts;
    use crate::ocsp::request::CertIdVariant;
    use bytes::Bytes;

    fn response(tag: u8) -> Arc<CachedResponse> {
        let facts = Facts { revoked: false, status_version: 0, this_update: 0, next_update: 1, not_after: 2 };
        Arc::new(CachedResponse::new(Bytes::from(vec![0x30, 0x01, tag]), facts, "unit"))
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

    /// The shards and the index agree: the same keys, each filed once under its certificate,
    /// each with one live CLOCK record, and `len` counts them.
    fn assert_consistent(tier: &RawTier) {
        let index = tier.lock();
        let mut in_shards = Vec::new();
        for shard in tier.shards.iter() {
            for (hash, slot) in shard.read().unwrap().iter() {
                in_shards.push((slot.entry.id.issuer_id, slot.entry.id.serial.clone(), *hash, slot.generation));
            }
        }
        let mut filed: Vec<_> = index
            .by_certificate
            .iter()
            .flat_map(|((issuer, serial), list)| list.iter().map(|f| (*issuer, serial.clone(), f.hash, f.generation)))
            .collect();
        in_shards.sort();
        filed.sort();
        assert_eq!(in_shards, filed, "shards and index disagree");
        assert_eq!(index.len, in_shards.len());
        assert!(index.by_certificate.values().all(|list| !list.is_empty() && list.len() <= MAX_KEYS_PER_CERTIFICATE));
        let live: Vec<_> = filed.iter().map(|(_, _, h, g)| Filed { hash: *h, generation: *g }).collect();
        for f in &live {
            assert_eq!(index.clock.iter().filter(|r| *r == f).count(), 1, "one CLOCK record per slot");
        }
        assert!(index.len <= tier.capacity);
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
            assert!(tier.get(request).is_none(), "{request:?} survived the change");
        }
        for (request, _) in forms("0a02") {
            assert_eq!(tier.get(request).map(|e| e.id.serial.to_string()), Some("0a02".into()), "{request:?}");
        }
        assert!(tier.get(other_issuer).is_some(), "another issuer's certificate of the same serial stays");
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
        assert!(tier.get(RawRequest::Post(b"same")).is_none());
        tier.insert(RawRequest::Post(b"same"), entry(&issuers, id(1, "02", CertIdVariant::Sha1Null)));
        assert_eq!(tier.get(RawRequest::Get(b"same")).unwrap().id.serial.to_string(), "01");
        assert_eq!(tier.get(RawRequest::Post(b"same")).unwrap().id.serial.to_string(), "02");
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
        assert_eq!(tier.get(request).unwrap().id.issuer_id, 2, "issuer 1 no longer owns the key");
        tier.remove_certificate(2, &Serial::from_hex("01").unwrap());
        assert!(tier.get(request).is_none());
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
                    tier.get(RawRequest::Get(path.as_bytes())).is_some(),
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
            assert!(tier.get(RawRequest::Get(path.as_bytes())).is_none(), "older spellings go first");
        }
        for path in &paths[paths.len() - MAX_KEYS_PER_CERTIFICATE..] {
            assert!(tier.get(RawRequest::Get(path.as_bytes())).is_some());
        }
        assert_consistent(&tier);
        // Many removals and re-insertions leave no CLOCK records behind to grow without bound.
        for _ in 0..2000 {
            tier.remove_certificate(1, &Serial::from_hex("01").unwrap());
            tier.insert(RawRequest::Get(b"/MFEw"), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        }
        let keys = tier.size().0;
        assert!(tier.lock().clock.len() <= 2 * keys + 1024 + 1);
        assert_consistent(&tier);
    }

    #[test]
    fn long_keys_and_a_disabled_tier_keep_nothing() {
        let (issuers, tier) = tier(10);
        let long = vec![b'A'; MAX_KEY_LEN + 1];
        tier.insert(RawRequest::Get(&long), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        assert!(tier.get(RawRequest::Get(&long)).is_none());
        assert_eq!(tier.size(), (0, 0));
        let off = RawTier::new(0);
        off.insert(RawRequest::Get(b"/x"), entry(&issuers, id(1, "01", CertIdVariant::Sha1Null)));
        assert!(off.get(RawRequest::Get(b"/x")).is_none());
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
