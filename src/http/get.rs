//! Recovering the DER request from an OCSP GET path (RFC 6960 appendix A.1).
//!
//! The path is `{prefix}/{url-encoding of base64(DER)}`, but clients and proxies disagree on
//! the encoding: some percent-encode `+`, `/` and `=`, some send them raw, some turn `+`
//! into a space, and some add a slash. The raw request path is decoded here rather than by
//! the router, which would collapse `//` inside the base64 (Boulder, Vault PR#18938) and
//! leaves `%2F` encoded.

use std::borrow::Cow;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use percent_encoding::percent_decode_str;

/// Standard alphabet; padding optional, as some clients strip it.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest GET path accepted. A request for 16 CertIDs with a nonce fits in well under 4 KiB.
pub const MAX_GET_PATH: usize = 8 * 1024;

/// Why a GET path is not an OCSP request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GetPathError {
    #[error("path does not start with the configured prefix")]
    WrongPrefix,
    #[error("path is {0} bytes long; at most {max} are accepted", max = MAX_GET_PATH)]
    TooLong(usize),
    #[error("path holds no request")]
    Empty,
    #[error("path is not URL-encoded base64: {0}")]
    NotBase64(String),
}

/// Decodes the raw request path (as sent, still percent-encoded) into request DER.
/// `prefix` is empty or starts with `/` and has no trailing `/`.
pub fn decode_path(raw_path: &str, prefix: &str) -> Result<Vec<u8>, GetPathError> {
    if raw_path.len() > MAX_GET_PATH {
        return Err(GetPathError::TooLong(raw_path.len()));
    }
    let rest = raw_path.strip_prefix(prefix).ok_or(GetPathError::WrongPrefix)?;
    if !prefix.is_empty() && !rest.starts_with('/') {
        return Err(GetPathError::WrongPrefix);
    }
    // DER requests start with 0x30, whose base64 is 'M': no leading '/' belongs to the data.
    let encoded = rest.trim_start_matches('/');
    if encoded.is_empty() {
        return Err(GetPathError::Empty);
    }
    let mut decoded: Cow<[u8]> = percent_decode_str(encoded).into();
    if decoded.contains(&b' ') {
        decoded.to_mut().iter_mut().filter(|b| **b == b' ').for_each(|b| *b = b'+');
    }
    LENIENT_BASE64.decode(&decoded).map_err(|e| GetPathError::NotBase64(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes whose base64 contains '+', '/' and '=' padding.
    const DER: &[u8] = &[0x30, 0xfb, 0xef, 0xbf, 0xff, 0x3e, 0x3f];

    #[test]
    fn every_spelling_of_the_same_request_decodes_to_it() {
        let plain = base64::engine::general_purpose::STANDARD.encode(DER);
        assert!(plain.contains('+') && plain.contains('/') && plain.ends_with('='), "{plain}");
        let encoded = plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        let lower = plain.replace('+', "%2b").replace('/', "%2f").replace('=', "%3d");
        let spaced = plain.replace('+', " ");
        let space_encoded = plain.replace('+', "%20");
        let unpadded = plain.trim_end_matches('=').to_owned();
        for path in [
            format!("/{plain}"),
            format!("/{encoded}"),
            format!("/{lower}"),
            format!("/{spaced}"),
            format!("/{space_encoded}"),
            format!("//{plain}"),
            format!("/{unpadded}"),
        ] {
            assert_eq!(decode_path(&path, "").as_deref(), Ok(DER), "{path}");
        }
        assert_eq!(decode_path(&format!("/ocsp/{encoded}"), "/ocsp").as_deref(), Ok(DER));
    }

    #[test]
    fn what_is_not_a_request_is_named() {
        assert_eq!(decode_path("/", ""), Err(GetPathError::Empty));
        assert_eq!(decode_path("/other/MA==", "/ocsp"), Err(GetPathError::WrongPrefix));
        assert_eq!(decode_path("/ocspMA==", "/ocsp"), Err(GetPathError::WrongPrefix));
        assert!(matches!(decode_path("/not*base64", ""), Err(GetPathError::NotBase64(_))));
        assert!(matches!(decode_path("/%ff%fe", ""), Err(GetPathError::NotBase64(_))));
        let long = format!("/{}", "A".repeat(MAX_GET_PATH));
        assert_eq!(decode_path(&long, ""), Err(GetPathError::TooLong(MAX_GET_PATH + 1)));
    }
}
