//! In-process response caches.
//!
//! The local tier, in front of Redis, is optional (`cache.local_entries = 0` turns it off). It
//! saves the Redis round trip for the most requested certificates, which during a CDN cache
//! drop are requested by the thousand. Its front, the raw-request tier ([`super::raw`], as
//! large), saves the decoding too for requests seen before byte for byte. The pipeline also
//! keeps a small tier of responses it signed in the last seconds, asked only when Redis misses
//! or fails (see `pipeline`). Revocation notifications remove entries from all of them; the
//! pipeline's freshness checks apply to their entries exactly as to Redis's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::entry::CachedResponse;
use crate::ocsp::request::CertIdVariant;
use crate::serial::Serial;

/// Identifies one cached response: the certificate and the CertID form it answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseId {
    pub issuer_id: i32,
    pub serial: Serial,
    pub variant: CertIdVariant,
}

/// A bounded, concurrent, in-process response cache.
pub struct LocalTier {
    cache: Option<Cache<ResponseId, (Arc<CachedResponse>, Instant)>>,
    entries: usize,
    /// How long an entry is kept at most, on top of the pipeline's own freshness rules.
    ttl: Option<Duration>,
}

impl LocalTier {
    /// A tier holding up to `entries` responses; 0 disables it.
    pub fn new(entries: usize) -> Self {
        LocalTier { cache: (entries > 0).then(|| Cache::new(entries)), entries, ttl: None }
    }

    /// How many responses it holds at most (0: it is off).
    pub fn capacity(&self) -> usize {
        self.entries
    }

    /// A tier whose entries are forgotten `ttl` after they were inserted.
    pub fn with_ttl(entries: usize, ttl: Duration) -> Self {
        LocalTier { ttl: Some(ttl), ..Self::new(entries) }
    }

    pub fn get(&self, id: &ResponseId) -> Option<Arc<CachedResponse>> {
        let (response, inserted) = self.cache.as_ref()?.get(id)?;
        match self.ttl {
            Some(ttl) if inserted.elapsed() >= ttl => None,
            _ => Some(response),
        }
    }

    pub fn insert(&self, id: ResponseId, response: Arc<CachedResponse>) {
        if let Some(cache) = &self.cache {
            cache.insert(id, (response, Instant::now()));
        }
    }

    pub fn remove(&self, id: &ResponseId) {
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
    }

    /// Drops every variant cached for one certificate.
    pub fn remove_certificate(&self, issuer_id: i32, serial: &Serial) {
        if self.cache.is_none() {
            return;
        }
        for variant in CertIdVariant::ALL {
            self.remove(&ResponseId { issuer_id, serial: serial.clone(), variant });
        }
    }
}
