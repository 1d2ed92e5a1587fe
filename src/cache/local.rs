//! The local tier: a small in-process cache of responses, in front of Redis.
//!
//! Optional (`cache.local_entries = 0` turns it off). It saves the Redis round trip for the
//! most requested certificates, which during a CDN cache drop are requested by the thousand.
//! Revocation notifications remove entries; the pipeline's freshness checks apply to its
//! entries exactly as to Redis's.

use std::sync::Arc;

use quick_cache::sync::Cache;

use super::keys::CertIdVariant;
use crate::entry::CachedResponse;
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
    cache: Option<Cache<ResponseId, Arc<CachedResponse>>>,
}

impl LocalTier {
    /// A tier holding up to `entries` responses; 0 disables it.
    pub fn new(entries: usize) -> Self {
        LocalTier { cache: (entries > 0).then(|| Cache::new(entries)) }
    }

    pub fn is_enabled(&self) -> bool {
        self.cache.is_some()
    }

    pub fn get(&self, id: &ResponseId) -> Option<Arc<CachedResponse>> {
        self.cache.as_ref()?.get(id)
    }

    pub fn insert(&self, id: ResponseId, response: Arc<CachedResponse>) {
        if let Some(cache) = &self.cache {
            cache.insert(id, response);
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
