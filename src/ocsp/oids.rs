//! Object identifiers that rasn-ocsp does not define.

use rasn::types::Oid;

/// id-pkix-ocsp-basic (RFC 6960 section 4.2.1).
pub const OCSP_BASIC: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 1]);
/// id-pkix-ocsp-nonce (RFC 9654).
pub const OCSP_NONCE: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 2]);
/// id-pkix-ocsp-response: AcceptableResponses (RFC 6960 section 4.4.3).
pub const OCSP_ACCEPTABLE_RESPONSES: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 4]);
/// id-pkix-ocsp-service-locator (RFC 6960 section 4.4.6).
pub const OCSP_SERVICE_LOCATOR: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 7]);
/// id-pkix-ocsp-pref-sig-algs: PreferredSignatureAlgorithms (RFC 6960 section 4.4.7).
pub const OCSP_PREF_SIG_ALGS: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 8]);
/// id-pkix-ocsp-extended-revoke (RFC 6960 section 4.4.8).
pub const OCSP_EXTENDED_REVOKE: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 9]);
/// id-sha1.
pub const SHA1: &Oid = Oid::const_new(&[1, 3, 14, 3, 2, 26]);
/// id-sha256.
pub const SHA256: &Oid = Oid::const_new(&[2, 16, 840, 1, 101, 3, 4, 2, 1]);
