//! Cache keys: the Redis key layout, shared by the responder (which writes) and the admin CLI
//! (which purges), and the CDN's purge tag.
//!
//! A response echoes the request's CertID byte for byte, so one certificate has up to four
//! distinct cached responses: SHA-1 or SHA-256 CertID, each with the hash AlgorithmIdentifier's
//! parameters either NULL (what OpenSSL sends) or absent. Each variant is its own key.
//! All four share a Redis Cluster hash tag, `{issuer:serial}`, so one DEL removes them all
//! even in cluster mode.

use std::fmt::Write as _;

use crate::ocsp::request::CertIdVariant;
use crate::serial::Serial;

/// The key suffix of one CertID form.
fn suffix(variant: CertIdVariant) -> &'static str {
    match variant {
        CertIdVariant::Sha1Null => "1n",
        CertIdVariant::Sha1Absent => "1a",
        CertIdVariant::Sha256Null => "2n",
        CertIdVariant::Sha256Absent => "2a",
    }
}

/// The Redis key of one cached response: `{prefix}:{<issuer_id>:<serialhex>}:<variant>`.
pub fn response_key(prefix: &str, issuer_id: i32, serial: &Serial, variant: CertIdVariant) -> String {
    // Built on every request: one allocation, sized up front (i32 has at most 11 characters).
    let mut key = String::with_capacity(prefix.len() + 2 * serial.as_bytes().len() + 20);
    key.push_str(prefix);
    key.push_str(":{");
    let _ = write!(key, "{issuer_id}");
    key.push(':');
    serial.push_hex(&mut key);
    key.push_str("}:");
    key.push_str(suffix(variant));
    key
}

/// Every key that may hold a response for this certificate: what a purge deletes.
pub fn all_response_keys(prefix: &str, issuer_id: i32, serial: &Serial) -> Vec<String> {
    CertIdVariant::ALL.iter().map(|v| response_key(prefix, issuer_id, serial, *v)).collect()
}

/// The purge tag of a certificate: the `Cache-Tag` header value the responder sends with its
/// responses, and what the CDN purge hook is given (see [`crate::purge::cdn`]). Issuer names
/// are operator text, and CDNs split tag lists on commas (Cloudflare) or spaces (Fastly's
/// Surrogate-Key): every character of the name but ASCII letters, digits and `._~-` becomes
/// `_`, so that the header and the hook carry the same single tag.
pub fn purge_tag(issuer_name: &str, serial: &Serial) -> String {
    let safe = |c: char| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-') { c } else { '_' };
    let mut tag: String = issuer_name.chars().map(safe).collect();
    let _ = write!(tag, ":{serial}");
    tag
}

/// The purge tags of a response about several certificates of one issuer, comma-separated
/// as `Cache-Tag` lists them.
pub fn purge_tags<'a>(issuer_name: &str, serials: impl IntoIterator<Item = &'a Serial>) -> String {
    serials.into_iter().map(|serial| purge_tag(issuer_name, serial)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_share_one_cluster_hash_tag() {
        let serial = Serial::from_hex("0a:bc").unwrap();
        let keys = all_response_keys("ocsp", 7, &serial);
        assert_eq!(keys.len(), 4);
        for key in &keys {
            assert!(key.starts_with("ocsp:{7:0abc}:"), "{key}");
        }
        assert_eq!(
            response_key("p", -3, &Serial::from_hex("00:ff:01").unwrap(), CertIdVariant::Sha256Absent),
            "p:{-3:ff01}:2a"
        );
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), 4);
    }

    #[test]
    fn a_purge_tag_is_one_token_that_a_header_can_carry() {
        let serial = Serial::from_hex("0a:bc").unwrap();
        assert_eq!(purge_tag("Société CA,\n2:x", &serial), "Soci_t__CA__2_x:0abc");
        assert_eq!(purge_tag("demo-1.ca_b~", &serial), "demo-1.ca_b~:0abc");
        let other = Serial::from_hex("01").unwrap();
        assert_eq!(purge_tags("demo", [&serial, &other]), "demo:0abc,demo:01");
    }
}
