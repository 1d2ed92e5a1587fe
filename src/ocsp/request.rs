//! Decoding OCSP requests (RFC 6960 section 4.1), and encoding them as clients do
//! ([`encode`], for the CDN hook's URLs, the load generator and the tests).
//!
//! rasn's decoder is lenient (it accepts some BER), which is fine for reading a request but
//! means the raw request bytes are never a shared cache key: Redis and the CertID-keyed local
//! tier key on the normalised (issuer, serial, CertID variant) instead. Only the in-process
//! raw-request tier ([`crate::cache::raw`]) keys on the bytes, each mapped to the response of
//! what they decoded to, and dropped with every other key of their certificate.
//!
//! Extensions follow RFC 5280 section 4.2 (which RFC 6960 section 4.4 builds on): a critical
//! extension the responder does not understand fails the request (malformedRequest), a
//! non-critical one is ignored. Understood, in requestExtensions only:
//! - the nonce (RFC 9654), whose value must be an OCTET STRING; whether it is echoed is the
//!   nonce policy's business (`responses.nonce`), not the parser's;
//! - AcceptableResponses (4.4.3): jitocsp only makes id-pkix-ocsp-basic responses, which
//!   every client must accept (4.2.1), so the list changes nothing;
//! - PreferredSignatureAlgorithms (4.4.7): 4.4.7.2 lets a responder fall back to an
//!   algorithm of its own when none of the preferred ones is supported, and an issuer's key
//!   signs with exactly one algorithm, so the list changes nothing either.
//!
//! Not understood: the service locator (4.4.6), because jitocsp never forwards a request to
//! another responder, and every extension in singleRequestExtensions. A recognised extension
//! whose value does not decode counts as not understood. The request version must be v1.

use bytes::Bytes;
use rasn::types::{IntegerType, ObjectIdentifier, OctetString, SequenceOf};
use rasn::Decode;
use rasn_ocsp::CertId;
use rasn_pkix::{Extension, Extensions};

use super::der::{push_tlv, write_header, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE};
use super::{oids, HashAlgorithm};
use crate::serial::{Serial, SerialError};
use crate::x509::CertIdHashes;

/// How the request's CertID was hashed, and how its AlgorithmIdentifier was spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertIdVariant {
    Sha1Null,
    Sha1Absent,
    Sha256Null,
    Sha256Absent,
}

impl CertIdVariant {
    pub const ALL: [CertIdVariant; 4] =
        [CertIdVariant::Sha1Null, CertIdVariant::Sha1Absent, CertIdVariant::Sha256Null, CertIdVariant::Sha256Absent];

    pub fn new(hash: HashAlgorithm, null_parameters: bool) -> Self {
        match (hash, null_parameters) {
            (HashAlgorithm::Sha1, true) => CertIdVariant::Sha1Null,
            (HashAlgorithm::Sha1, false) => CertIdVariant::Sha1Absent,
            (HashAlgorithm::Sha256, true) => CertIdVariant::Sha256Null,
            (HashAlgorithm::Sha256, false) => CertIdVariant::Sha256Absent,
        }
    }

    pub fn hash(self) -> HashAlgorithm {
        match self {
            CertIdVariant::Sha1Null | CertIdVariant::Sha1Absent => HashAlgorithm::Sha1,
            CertIdVariant::Sha256Null | CertIdVariant::Sha256Absent => HashAlgorithm::Sha256,
        }
    }

    /// Whether the hash AlgorithmIdentifier carries NULL parameters (OpenSSL's spelling).
    pub fn null_parameters(self) -> bool {
        matches!(self, CertIdVariant::Sha1Null | CertIdVariant::Sha256Null)
    }

    /// The hash AlgorithmIdentifier, DER.
    fn algorithm_identifier(self) -> &'static [u8] {
        match self {
            CertIdVariant::Sha1Null => &[0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00],
            CertIdVariant::Sha1Absent => &[0x30, 0x07, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a],
            CertIdVariant::Sha256Null => {
                &[0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00]
            }
            CertIdVariant::Sha256Absent => {
                &[0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]
            }
        }
    }
}

/// Most CertIDs answered in one request. Browsers send one; this bounds the work (Postgres
/// reads and response size) a single request can cause.
pub const MAX_CERT_IDS: usize = 16;

/// RFC 9654 section 2.1: a nonce is 1 to 128 octets.
pub const MAX_NONCE_LEN: usize = 128;

/// A decoded request: what is asked about, and the nonce if one was sent.
#[derive(Clone, Debug)]
pub struct OcspRequest {
    pub certs: Vec<RequestedCert>,
    pub nonce: Option<Nonce>,
}

/// One CertID of the request, with its parts checked and normalised.
#[derive(Clone, Debug)]
pub struct RequestedCert {
    /// The CertID as decoded; echoed in the response.
    pub cert_id: CertId,
    pub hash: HashAlgorithm,
    pub variant: CertIdVariant,
    pub serial: Serial,
}

impl RequestedCert {
    pub fn issuer_name_hash(&self) -> &[u8] {
        &self.cert_id.issuer_name_hash
    }

    pub fn issuer_key_hash(&self) -> &[u8] {
        &self.cert_id.issuer_key_hash
    }
}

/// The request's nonce extension.
#[derive(Clone, Debug)]
pub struct Nonce {
    /// The extension's extnValue, exactly as sent: echoed as is.
    pub extn_value: Bytes,
    /// Length of the nonce octets inside it, or None if extnValue is not an OCTET STRING.
    pub len: Option<usize>,
}

impl Nonce {
    /// Whether RFC 9654 allows echoing this nonce.
    pub fn is_acceptable(&self) -> bool {
        matches!(self.len, Some(1..=MAX_NONCE_LEN))
    }
}

/// Where in a request an extension was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionPlace {
    Request,
    /// The singleRequestExtensions of the n-th CertID (counted from 1).
    SingleRequest(usize),
}

impl std::fmt::Display for ExtensionPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtensionPlace::Request => f.write_str("requestExtensions"),
            ExtensionPlace::SingleRequest(n) => write!(f, "singleRequestExtensions of CertID {n}"),
        }
    }
}

/// Why a request is a malformedRequest. Each names the first problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("request is not a DER OCSPRequest: {0}")]
    Undecodable(String),
    #[error("request has {0} bytes after the OCSPRequest")]
    TrailingData(usize),
    #[error("request version {0} is not v1 (0)")]
    UnsupportedVersion(String),
    #[error("critical extension {oid} in {place} is not understood")]
    UnknownCriticalExtension { oid: String, place: ExtensionPlace },
    #[error("request asks about no certificate")]
    NoCertIds,
    #[error("request asks about {0} certificates; at most {max} are answered", max = MAX_CERT_IDS)]
    TooManyCertIds(usize),
    #[error("CertID hash algorithm {0} is not SHA-1 or SHA-256")]
    UnsupportedHash(String),
    #[error("CertID hash AlgorithmIdentifier has parameters other than NULL")]
    UnexpectedHashParameters,
    #[error("CertID issuer hashes are not {0} octets long")]
    BadHashLength(usize),
    #[error("CertID serial: {0}")]
    BadSerial(#[from] SerialError),
}

/// Decodes a DER OCSPRequest.
pub fn parse(der: &[u8]) -> Result<OcspRequest, Malformed> {
    let (request, rest) = rasn::der::decode_with_remainder::<rasn_ocsp::OcspRequest>(der)
        .map_err(|e| Malformed::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Malformed::TrailingData(rest.len()));
    }
    if request.tbs_request.version != rasn::types::Integer::ZERO {
        return Err(Malformed::UnsupportedVersion(request.tbs_request.version.to_string()));
    }
    check_critical(request.tbs_request.request_extensions.as_ref(), ExtensionPlace::Request)?;
    let list = request.tbs_request.request_list;
    if list.is_empty() {
        return Err(Malformed::NoCertIds);
    }
    if list.len() > MAX_CERT_IDS {
        return Err(Malformed::TooManyCertIds(list.len()));
    }
    let certs = list
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            check_critical(r.single_request_extensions.as_ref(), ExtensionPlace::SingleRequest(i + 1))?;
            check_cert_id(r.req_cert)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nonce = request
        .tbs_request
        .request_extensions
        .iter()
        .flat_map(|extensions| extensions.iter())
        .find(|e| e.extn_id == *oids::OCSP_NONCE)
        .map(|e| {
            let extn_value: Bytes = e.extn_value.clone().into();
            let len = super::der::read_tlv(&extn_value)
                .filter(|(tag, _, rest)| *tag == super::der::TAG_OCTET_STRING && rest.is_empty())
                .map(|(_, content, _)| content.len());
            Nonce { extn_value, len }
        });
    Ok(OcspRequest { certs, nonce })
}

/// The parts of one CertID to encode.
#[derive(Clone, Copy, Debug)]
pub struct CertIdParts<'a> {
    pub variant: CertIdVariant,
    /// Made with the variant's hash algorithm.
    pub issuer_name_hash: &'a [u8],
    pub issuer_key_hash: &'a [u8],
    /// The serialNumber INTEGER's content octets, written as given (for a valid serial,
    /// [`Serial::as_bytes`]; tests pass invalid ones on purpose).
    pub serial: &'a [u8],
}

impl<'a> CertIdParts<'a> {
    /// The CertID of `serial` under the issuer whose hashes are `hashes`.
    pub fn new(hashes: &'a CertIdHashes, variant: CertIdVariant, serial: &'a [u8]) -> Self {
        let (issuer_name_hash, issuer_key_hash): (&[u8], &[u8]) = match variant.hash() {
            HashAlgorithm::Sha1 => (&hashes.name_sha1, &hashes.key_sha1),
            HashAlgorithm::Sha256 => (&hashes.name_sha256, &hashes.key_sha256),
        };
        CertIdParts { variant, issuer_name_hash, issuer_key_hash, serial }
    }

    /// Appends the CertID's DER, which a response must echo byte for byte.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let algorithm = self.variant.algorithm_identifier();
        let content_len = algorithm.len()
            + super::der::tlv_len(self.issuer_name_hash.len())
            + super::der::tlv_len(self.issuer_key_hash.len())
            + super::der::tlv_len(self.serial.len());
        write_header(out, TAG_SEQUENCE, content_len);
        out.extend_from_slice(algorithm);
        push_tlv(out, TAG_OCTET_STRING, self.issuer_name_hash);
        push_tlv(out, TAG_OCTET_STRING, self.issuer_key_hash);
        push_tlv(out, TAG_INTEGER, self.serial);
    }

    pub fn to_der(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(120);
        self.encode_into(&mut out);
        out
    }
}

/// `[2]` EXPLICIT, the requestExtensions of a TBSRequest.
const TAG_REQUEST_EXTENSIONS: u8 = 0xa2;
/// id-pkix-ocsp-nonce, DER (OBJECT IDENTIFIER tag included).
const NONCE_OID: &[u8] = &[0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];

/// Encodes an unsigned OCSPRequest as clients send it: version v1 left at its default, no
/// requestorName, one Request per CertID without singleRequestExtensions, and `nonce` (the
/// nonce octets) as a non-critical RFC 9654 nonce extension when given. With one SHA-1 CertID
/// (NULL parameters) and no nonce this is byte for byte what `openssl ocsp -no_nonce -reqout`
/// writes: what browsers and stapling servers send, and so what CDNs cache under its GET URL.
pub fn encode(cert_ids: &[CertIdParts<'_>], nonce: Option<&[u8]>) -> Vec<u8> {
    let mut requests = Vec::with_capacity(cert_ids.len() * 120);
    for id in cert_ids {
        let mut request = Vec::with_capacity(120);
        id.encode_into(&mut request);
        push_tlv(&mut requests, TAG_SEQUENCE, &request);
    }
    let mut tbs = Vec::with_capacity(requests.len() + 200);
    push_tlv(&mut tbs, TAG_SEQUENCE, &requests);
    if let Some(nonce) = nonce {
        let mut extension = NONCE_OID.to_vec();
        push_tlv(&mut extension, TAG_OCTET_STRING, &super::der::tlv(TAG_OCTET_STRING, nonce));
        let extensions = super::der::tlv(TAG_SEQUENCE, &super::der::tlv(TAG_SEQUENCE, &extension));
        push_tlv(&mut tbs, TAG_REQUEST_EXTENSIONS, &extensions);
    }
    let tbs = super::der::tlv(TAG_SEQUENCE, &tbs);
    super::der::tlv(TAG_SEQUENCE, &tbs)
}

/// Fails on the first critical extension in `extensions` that is not understood at `place`.
fn check_critical(extensions: Option<&Extensions>, place: ExtensionPlace) -> Result<(), Malformed> {
    let unknown = extensions.into_iter().flat_map(|e| e.iter()).find(|e| e.critical && !understood(e, place));
    match unknown {
        Some(e) => Err(Malformed::UnknownCriticalExtension { oid: e.extn_id.to_string(), place }),
        None => Ok(()),
    }
}

mod asn1 {
    use rasn::prelude::*;
    use rasn_pkix::AlgorithmIdentifier;

    /// PreferredSignatureAlgorithm (RFC 6960 section 4.4.7.1), which rasn-ocsp does not define.
    #[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
    pub struct PreferredSignatureAlgorithm {
        pub sig_identifier: AlgorithmIdentifier,
        pub cert_identifier: Option<AlgorithmIdentifier>,
    }
}
use asn1::PreferredSignatureAlgorithm;

/// Whether jitocsp understands `extension` at `place` (see the module documentation).
fn understood(extension: &Extension, place: ExtensionPlace) -> bool {
    if place != ExtensionPlace::Request {
        return false;
    }
    let value: &[u8] = &extension.extn_value;
    let id = &extension.extn_id;
    if id == oids::OCSP_NONCE {
        decodes_fully::<OctetString>(value)
    } else if id == oids::OCSP_ACCEPTABLE_RESPONSES {
        decodes_fully::<SequenceOf<ObjectIdentifier>>(value)
    } else if id == oids::OCSP_PREF_SIG_ALGS {
        decodes_fully::<SequenceOf<PreferredSignatureAlgorithm>>(value)
    } else {
        false
    }
}

fn decodes_fully<T: Decode>(der: &[u8]) -> bool {
    matches!(rasn::der::decode_with_remainder::<T>(der), Ok((_, rest)) if rest.is_empty())
}

fn check_cert_id(cert_id: CertId) -> Result<RequestedCert, Malformed> {
    let algorithm = &cert_id.hash_algorithm;
    let (hash, hash_len) = if algorithm.algorithm == *oids::SHA1 {
        (HashAlgorithm::Sha1, 20)
    } else if algorithm.algorithm == *oids::SHA256 {
        (HashAlgorithm::Sha256, 32)
    } else {
        return Err(Malformed::UnsupportedHash(algorithm.algorithm.to_string()));
    };
    let null_parameters = match &algorithm.parameters {
        None => false,
        Some(any) if any.as_bytes() == [0x05, 0x00] => true,
        Some(_) => return Err(Malformed::UnexpectedHashParameters),
    };
    if cert_id.issuer_name_hash.len() != hash_len || cert_id.issuer_key_hash.len() != hash_len {
        return Err(Malformed::BadHashLength(hash_len));
    }
    let variant = CertIdVariant::new(hash, null_parameters);
    let serial = {
        let (serial_bytes, len) = cert_id.serial_number.to_signed_bytes_be();
        Serial::from_signed_be(&serial_bytes.as_ref()[..len])?
    };
    Ok(RequestedCert { cert_id, hash, variant, serial })
}

#[cfg(test)]
pub(crate) mod tests;
