//! A signed response as it is cached, with what serving it needs computed once at signing.
//!
//! In Redis the value is a fixed header followed by the DER, so a hit costs one GET and no
//! parsing of the OCSP structure: the HTTP layer reads times and the ETag from the header and
//! sends the DER slice as it is, without copying it.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Format tag of the Redis value; bump when the layout changes (old values then read as misses).
const FORMAT: u8 = 1;
/// format(1) + revoked(1) + read_at(8) + this_update(8) + next_update(8) + not_after(8) + etag(64)
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 8 + 8 + 64;

/// A signed, encoded, single-certificate OCSP response and its facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    /// The complete `OCSPResponse` DER.
    pub der: Bytes,
    /// Whether the status in it is revoked.
    pub revoked: bool,
    /// When its status was read from Postgres (Postgres clock), microseconds since the epoch.
    pub read_at_micros: i64,
    /// thisUpdate and nextUpdate, seconds since the epoch.
    pub this_update: i64,
    pub next_update: i64,
    /// The certificate's notAfter, seconds since the epoch (for the expired-certificate grace).
    pub not_after: i64,
    /// Lower-case hex SHA-256 of `der`: the ETag (RFC 9919 section 6).
    pub etag: [u8; 64],
}

impl CachedResponse {
    pub fn new(
        der: Bytes,
        revoked: bool,
        read_at_micros: i64,
        this_update: i64,
        next_update: i64,
        not_after: i64,
    ) -> Self {
        let mut etag = [0u8; 64];
        // Writing 32 bytes of hex into 64 bytes cannot fail.
        let _ = hex::encode_to_slice(Sha256::digest(&der), &mut etag);
        CachedResponse { der, revoked, read_at_micros, this_update, next_update, not_after, etag }
    }

    /// The ETag as text.
    pub fn etag_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.etag).unwrap_or("")
    }

    /// The Redis value.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.der.len());
        out.put_u8(FORMAT);
        out.put_u8(self.revoked as u8);
        out.put_i64(self.read_at_micros);
        out.put_i64(self.this_update);
        out.put_i64(self.next_update);
        out.put_i64(self.not_after);
        out.put_slice(&self.etag);
        out.put_slice(&self.der);
        out.freeze()
    }

    /// Reads a Redis value; `None` for anything that is not a value this version wrote.
    /// The DER is a slice of `value`, not a copy.
    pub fn from_bytes(value: Bytes) -> Option<Self> {
        if value.len() <= HEADER_LEN || value[0] != FORMAT || value[1] > 1 {
            return None;
        }
        let int = |at: usize| i64::from_be_bytes(value[at..at + 8].try_into().unwrap_or_default());
        let mut etag = [0u8; 64];
        etag.copy_from_slice(&value[34..98]);
        if !etag.iter().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(CachedResponse {
            revoked: value[1] == 1,
            read_at_micros: int(2),
            this_update: int(10),
            next_update: int(18),
            not_after: int(26),
            etag,
            der: value.slice(HEADER_LEN..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_redis_bytes() {
        let entry = CachedResponse::new(
            Bytes::from_static(b"\x30\x03\x0a\x01\x00"),
            true,
            123,
            1_700_000_000,
            1_700_345_600,
            1_800_000_000,
        );
        assert_eq!(entry.etag_str(), hex::encode(Sha256::digest(b"\x30\x03\x0a\x01\x00")));
        let back = CachedResponse::from_bytes(entry.to_bytes()).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn foreign_or_truncated_values_are_misses() {
        let bytes = CachedResponse::new(Bytes::from_static(b"der"), false, 1, 2, 3, 4).to_bytes();
        for cut in 0..=HEADER_LEN {
            assert!(CachedResponse::from_bytes(bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut other_format = bytes.to_vec();
        other_format[0] = 9;
        assert!(CachedResponse::from_bytes(Bytes::from(other_format)).is_none());
        assert!(CachedResponse::from_bytes(Bytes::from_static(b"plain old string value")).is_none());
    }
}
