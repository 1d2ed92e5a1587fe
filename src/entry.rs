//! A signed response as it is cached, with what serving it needs computed once at signing.
//!
//! In Redis the value is a small header followed by the DER. The header holds the facts the
//! pipeline checks (status, read time, validity, the certificate's expiry) and the HTTP
//! header values (ETag, Last-Modified, Expires, purge tag), ready to send: a hit costs one
//! GET, no parsing of the OCSP structure, no hashing or date formatting, and every header
//! value and the DER are slices of the one buffer Redis returned, not copies. A freshly signed
//! response is laid out the same way, in one allocation that its Redis write sends as it is.

use actix_web::http::header::HeaderValue;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Format tag of the Redis value; bump when the layout changes (old values then read as misses).
const FORMAT: u8 = 3;
/// format(1) + revoked(1) + status_version(8) + this_update(8) + next_update(8) + not_after(8)
const FIXED_LEN: usize = 1 + 1 + 8 + 8 + 8 + 8;

/// The validity facts of a response, checked before it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Whether the status in it is revoked.
    pub revoked: bool,
    /// The status version of the row it was signed from (`certificates.changed_version`):
    /// any change heard of with a higher version makes it unusable.
    pub status_version: i64,
    /// thisUpdate and nextUpdate, seconds since the epoch.
    pub this_update: i64,
    pub next_update: i64,
    /// The certificate's notAfter, seconds since the epoch (for the expired-certificate grace).
    pub not_after: i64,
}

/// HTTP header values that depend only on the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    /// `"<hex SHA-256 of the DER>"` (RFC 9919 section 6).
    pub etag: HeaderValue,
    /// thisUpdate and nextUpdate as IMF-fixdate.
    pub last_modified: HeaderValue,
    pub expires: HeaderValue,
    /// `<issuer name>:<serial hex>`, comma-separated when a response covers several.
    pub purge_tag: HeaderValue,
}

/// A signed, encoded OCSP response, its facts and its header values.
///
/// All of it lives in one buffer, the Redis value ([`CachedResponse::to_bytes`]): the DER and
/// the header values are slices of it. A hit then reads one contiguous run of memory and
/// touches one reference count, and a fresh response costs one allocation, which its Redis
/// write sends as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    /// The complete `OCSPResponse` DER.
    pub der: Bytes,
    pub facts: Facts,
    pub headers: Headers,
    /// The Redis value that `der` and `headers` are slices of.
    value: Bytes,
}

/// Longest header value the layout can hold (its length is a `u16`).
const MAX_FIELD_LEN: usize = u16::MAX as usize;

impl CachedResponse {
    /// Computes the header values of a freshly signed response. `purge_tag` is made by
    /// [`crate::cache::keys::purge_tag`] or [`crate::cache::keys::purge_tags`], which keep it
    /// header-safe; `None` if it is not (a bug: the response is then not served rather than
    /// served without validators).
    pub fn new(der: &[u8], facts: Facts, purge_tag: &str) -> Option<Self> {
        let mut etag = [b'"'; 2 + 2 * 32];
        // 32 bytes make exactly 64 hex digits: the slice always fits.
        let _ = hex::encode_to_slice(Sha256::digest(der), &mut etag[1..65]);
        let last_modified = http_date(facts.this_update);
        let expires = http_date(facts.next_update);
        let mut purge_tag = purge_tag.as_bytes();
        if purge_tag.len() > MAX_FIELD_LEN {
            // Only thousands-of-characters issuer names get here: keep the whole tags that fit.
            let last_comma = purge_tag[..MAX_FIELD_LEN].iter().rposition(|b| *b == b',');
            purge_tag = &purge_tag[..last_comma.unwrap_or(0)];
        }
        let fields = [&etag[..], last_modified.as_bytes(), expires.as_bytes(), purge_tag];
        let len = FIXED_LEN + fields.iter().map(|v| 2 + v.len()).sum::<usize>() + der.len();
        let mut out = BytesMut::with_capacity(len);
        out.put_u8(FORMAT);
        out.put_u8(facts.revoked as u8);
        out.put_i64(facts.status_version);
        out.put_i64(facts.this_update);
        out.put_i64(facts.next_update);
        out.put_i64(facts.not_after);
        for value in fields {
            out.put_u16(value.len() as u16);
            out.put_slice(value);
        }
        out.put_slice(der);
        Self::slice(out.freeze())
    }

    /// The ETag without its quotes, for comparing with `If-None-Match`.
    pub fn etag_hex(&self) -> &[u8] {
        let quoted = self.headers.etag.as_bytes();
        quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default()
    }

    /// The Redis value (no copy: the response is kept in that form).
    pub fn to_bytes(&self) -> Bytes {
        self.value.clone()
    }

    /// Reads a Redis value; `None` for anything that is not a value this version wrote.
    pub fn from_bytes(value: Bytes) -> Option<Self> {
        let response = Self::slice(value)?;
        // The DER must be exactly one complete TLV.
        match crate::ocsp::der::read_tlv(&response.der) {
            Some((_, _, [])) => Some(response),
            _ => None,
        }
    }

    /// Splits a value into its facts, header values and DER (not checked).
    fn slice(value: Bytes) -> Option<Self> {
        if value.len() <= FIXED_LEN || value[0] != FORMAT || value[1] > 1 {
            return None;
        }
        let mut rest = value.slice(1..);
        let facts = Facts {
            revoked: rest.get_u8() == 1,
            status_version: rest.get_i64(),
            this_update: rest.get_i64(),
            next_update: rest.get_i64(),
            not_after: rest.get_i64(),
        };
        let mut field = || -> Option<HeaderValue> {
            let len = rest.try_get_u16().ok()? as usize;
            if rest.len() < len {
                return None;
            }
            HeaderValue::from_maybe_shared(rest.split_to(len)).ok()
        };
        let headers = Headers { etag: field()?, last_modified: field()?, expires: field()?, purge_tag: field()? };
        Some(CachedResponse { der: rest, facts, headers, value })
    }
}

/// IMF-fixdate, always "GMT" (Boulder once sent "UTC", which is not an HTTP date).
fn http_date(unix_seconds: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedResponse {
        let facts = Facts {
            revoked: true,
            status_version: 123,
            this_update: 1_700_000_000,
            next_update: 1_700_345_600,
            not_after: 1_800_000_000,
        };
        CachedResponse::new(b"\x30\x03\x0a\x01\x00", facts, "demo:0abc").unwrap()
    }

    #[test]
    fn header_values_are_computed_once_and_round_trip_through_redis_bytes() {
        let entry = sample();
        assert_eq!(entry.etag_hex(), hex::encode(Sha256::digest(b"\x30\x03\x0a\x01\x00")).as_bytes());
        assert_eq!(entry.headers.etag.len(), 66);
        assert_eq!(entry.headers.last_modified, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(entry.headers.expires, "Sat, 18 Nov 2023 22:13:20 GMT");
        assert_eq!(entry.headers.purge_tag, "demo:0abc");
        assert_eq!(CachedResponse::from_bytes(entry.to_bytes()).unwrap(), entry);
    }

    #[test]
    fn foreign_or_truncated_values_are_misses() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(CachedResponse::from_bytes(bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut other_format = bytes.to_vec();
        other_format[0] = 9;
        assert!(CachedResponse::from_bytes(Bytes::from(other_format)).is_none());
        assert!(
            CachedResponse::from_bytes(Bytes::from_static(b"plain old string value, long enough to pass")).is_none()
        );
    }

    #[test]
    fn a_fresh_response_is_one_buffer_that_its_redis_write_sends_as_it_is() {
        let entry = sample();
        let value = entry.to_bytes();
        assert_eq!(value.as_ptr(), entry.to_bytes().as_ptr(), "to_bytes copies nothing");
        let within = |part: &[u8]| value.as_ptr_range().contains(&part.as_ptr());
        assert!(
            within(&entry.der) && within(entry.headers.etag.as_bytes()) && within(entry.headers.purge_tag.as_bytes())
        );
        assert_eq!(&value[value.len() - entry.der.len()..], b"\x30\x03\x0a\x01\x00");
    }

    #[test]
    fn a_tag_no_header_can_carry_makes_no_response_rather_than_one_without_validators() {
        let facts = Facts { revoked: false, status_version: 0, this_update: 0, next_update: 0, not_after: 0 };
        assert!(CachedResponse::new(b"\x30\x00", facts, "bad\ntag:01").is_none());
    }

    #[test]
    fn an_overlong_purge_tag_keeps_the_whole_tags_that_fit() {
        let facts = Facts { revoked: false, status_version: 0, this_update: 0, next_update: 0, not_after: 0 };
        let tag = format!("{}:01", "n".repeat(5000));
        let tags = vec![tag.as_str(); 16].join(",");
        let entry = CachedResponse::new(b"\x30\x00", facts, &tags).unwrap();
        let kept = entry.headers.purge_tag.to_str().unwrap();
        assert_eq!(kept.split(',').collect::<Vec<_>>(), vec![tag.as_str(); 13], "13 whole tags fit in 65,535 bytes");
        assert_eq!(CachedResponse::from_bytes(entry.to_bytes()).unwrap(), entry);
    }
}
