//! Decoding OCSP requests (RFC 6960 section 4.1), and encoding them as clients do
//! ([`encode`], for the CDN hook's URLs, the load generator and the tests).
//!
//! rasn's decoder is lenient (it accepts some BER), which is fine for reading a request but
//! means the raw request bytes are never a cache key: everything downstream keys on the
//! normalised (issuer, serial, CertID variant) instead.
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
pub(crate) mod tests {
    use super::*;
    use rasn::types::{Any, Integer, ObjectIdentifier, OctetString};
    use rasn_ocsp::{Request, TbsRequest};
    use rasn_pkix::{AlgorithmIdentifier, Extension};

    /// Encodes a request for `serials` with the given hash algorithm and issuer hashes;
    /// `nonce_extn_value` is the nonce extension's extnValue (an OCTET STRING).
    pub(crate) fn encode_request(
        hash: HashAlgorithm,
        null_params: bool,
        name_hash: &[u8],
        key_hash: &[u8],
        serials: &[&[u8]],
        nonce_extn_value: Option<&[u8]>,
    ) -> Vec<u8> {
        let variant = CertIdVariant::new(hash, null_params);
        let ids: Vec<CertIdParts> = serials
            .iter()
            .map(|serial| CertIdParts { variant, issuer_name_hash: name_hash, issuer_key_hash: key_hash, serial })
            .collect();
        let nonce = nonce_extn_value.map(|v| match crate::ocsp::der::read_tlv(v) {
            Some((TAG_OCTET_STRING, nonce, [])) => nonce,
            _ => panic!("test helper: a nonce extnValue is one OCTET STRING"),
        });
        encode(&ids, nonce)
    }

    /// The same request built with rasn's encoder: an independent check of [`encode`].
    fn rasn_encode(ids: &[CertIdParts], nonce: Option<&[u8]>) -> Vec<u8> {
        let request_list = ids
            .iter()
            .map(|id| Request {
                req_cert: CertId {
                    hash_algorithm: AlgorithmIdentifier {
                        algorithm: ObjectIdentifier::from(match id.variant.hash() {
                            HashAlgorithm::Sha1 => oids::SHA1,
                            HashAlgorithm::Sha256 => oids::SHA256,
                        }),
                        parameters: id.variant.null_parameters().then(|| Any::new(vec![0x05, 0x00])),
                    },
                    issuer_name_hash: OctetString::from_slice(id.issuer_name_hash),
                    issuer_key_hash: OctetString::from_slice(id.issuer_key_hash),
                    serial_number: Integer::try_from_signed_bytes(id.serial, rasn::Codec::Der).unwrap(),
                },
                single_request_extensions: None,
            })
            .collect();
        let request_extensions = nonce.map(|n| {
            let value = rasn::der::encode(&OctetString::from_slice(n)).unwrap();
            rasn_pkix::Extensions::from(vec![extension(oids::OCSP_NONCE, false, &value)])
        });
        rasn::der::encode(&rasn_ocsp::OcspRequest {
            tbs_request: TbsRequest { version: Integer::ZERO, requestor_name: None, request_list, request_extensions },
            optional_signature: None,
        })
        .unwrap()
    }

    #[test]
    fn encode_round_trips_through_parse_for_every_variant() {
        let hashes = CertIdHashes { name_sha1: [1; 20], key_sha1: [2; 20], name_sha256: [3; 32], key_sha256: [4; 32] };
        let serials: [&[u8]; 3] = [&[0x0a, 0xbc], &[0x01], &[0x40; 20]];
        let long_nonce = [7u8; 128];
        for variant in CertIdVariant::ALL {
            for n in [1, 3] {
                for nonce in [None, Some(&[9u8; 16][..]), Some(&long_nonce[..])] {
                    let ids: Vec<CertIdParts> =
                        serials[..n].iter().map(|s| CertIdParts::new(&hashes, variant, s)).collect();
                    let der = encode(&ids, nonce);
                    assert_eq!(der, rasn_encode(&ids, nonce), "{variant:?} x{n} nonce {:?}", nonce.map(<[u8]>::len));
                    let request = parse(&der).unwrap();
                    assert_eq!(request.certs.len(), n);
                    for (got, id) in request.certs.iter().zip(&ids) {
                        assert_eq!(got.variant, variant);
                        assert_eq!(got.hash, variant.hash());
                        assert_eq!(
                            (got.issuer_name_hash(), got.issuer_key_hash()),
                            (id.issuer_name_hash, id.issuer_key_hash)
                        );
                        assert_eq!(got.serial.as_bytes(), id.serial);
                        assert_eq!(rasn::der::encode(&got.cert_id).unwrap(), id.to_der(), "the CertID echoed");
                    }
                    match nonce {
                        None => assert!(request.nonce.is_none()),
                        Some(nonce) => {
                            let got = request.nonce.unwrap();
                            assert_eq!(got.len, Some(nonce.len()));
                            assert_eq!(&got.extn_value[..], crate::ocsp::der::tlv(TAG_OCTET_STRING, nonce));
                        }
                    }
                }
            }
        }
    }

    /// `openssl ocsp -issuer tests/fixtures/unit-ca.pem -serial 0x0abc -reqout`, without and
    /// with a nonce (OpenSSL 3.0).
    const OPENSSL_REQUEST: &str = "30433041303f303d303b300906052b0e03021a0500041418c2e4a9542c7afbe70abd76be7017a8\
        69e11315041404fb4abfbc9c1bfa705b0bbee928b6dbc56a3d3e02020abc";
    const OPENSSL_REQUEST_NONCE: &str = "30683066303f303d303b300906052b0e03021a0500041418c2e4a9542c7afbe70abd76be7\
        017a869e11315041404fb4abfbc9c1bfa705b0bbee928b6dbc56a3d3e02020abca2233021301f06092b060105050730010204120410\
        dce048fe8b3365365e964b933c50af41";

    #[test]
    fn encode_matches_openssl_byte_for_byte() {
        let ca = include_bytes!("../../tests/fixtures/unit-ca.der");
        let hashes = crate::x509::certid_hashes(ca).unwrap();
        let serial = Serial::from_hex("0abc").unwrap();
        let id = CertIdParts::new(&hashes, CertIdVariant::Sha1Null, serial.as_bytes());
        assert_eq!(hex::encode(encode(&[id], None)), OPENSSL_REQUEST);
        let nonce = hex::decode("dce048fe8b3365365e964b933c50af41").unwrap();
        assert_eq!(hex::encode(encode(&[id], Some(&nonce))), OPENSSL_REQUEST_NONCE);
    }

    #[test]
    fn decodes_sha1_and_sha256_cert_ids_with_their_variant() {
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[0x0a, 0xbc]], None);
        let request = parse(&der).unwrap();
        assert_eq!(request.certs.len(), 1);
        let cert = &request.certs[0];
        assert_eq!((cert.hash, cert.variant), (HashAlgorithm::Sha1, CertIdVariant::Sha1Null));
        assert_eq!(cert.serial, Serial::from_hex("0abc").unwrap());
        assert_eq!(cert.issuer_key_hash(), &[2; 20]);
        assert!(request.nonce.is_none());

        let der = encode_request(HashAlgorithm::Sha256, false, &[1; 32], &[2; 32], &[&[1], &[2]], None);
        let request = parse(&der).unwrap();
        assert_eq!(request.certs.len(), 2);
        assert_eq!(request.certs[1].variant, CertIdVariant::Sha256Absent);
    }

    #[test]
    fn nonce_is_kept_verbatim_and_measured() {
        let nonce = [0x04, 0x03, 9, 9, 9];
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[1]], Some(&nonce));
        let got = parse(&der).unwrap().nonce.unwrap();
        assert_eq!(&got.extn_value[..], &nonce);
        assert_eq!(got.len, Some(3));
        assert!(got.is_acceptable());

        let empty = [0x04, 0x00];
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[1]], Some(&empty));
        assert!(!parse(&der).unwrap().nonce.unwrap().is_acceptable());

        let mut long = vec![0x04, 0x81, 129];
        long.extend([7u8; 129]);
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[1]], Some(&long));
        assert!(!parse(&der).unwrap().nonce.unwrap().is_acceptable());
    }

    #[test]
    fn garbage_and_truncations_are_malformed_never_a_panic() {
        assert!(matches!(parse(b""), Err(Malformed::Undecodable(_))));
        assert!(matches!(parse(b"hello world"), Err(Malformed::Undecodable(_))));
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[1]], None);
        for cut in 0..der.len() {
            assert!(parse(&der[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(parse(&trailing).unwrap_err(), Malformed::TrailingData(1));
        // Every single-byte corruption is refused, or decodes to one well-formed SHA-1 CertID
        // (a corrupted hash byte is just another issuer's question). Structure bytes (tags,
        // lengths, the algorithm) are all refused, and so is the serial, which turns negative.
        let mut refused = Vec::new();
        for i in 0..der.len() {
            let mut corrupt = der.clone();
            corrupt[i] ^= 0xff;
            match parse(&corrupt) {
                Err(_) => refused.push(i),
                Ok(request) => {
                    assert_eq!(request.certs.len(), 1, "corruption at {i} changed the CertID count");
                    let id = &request.certs[0].cert_id;
                    assert_eq!(
                        (id.issuer_name_hash.len(), id.issuer_key_hash.len()),
                        (20, 20),
                        "corruption at {i} accepted with other hash lengths"
                    );
                }
            }
        }
        let accepted = der.len() - refused.len();
        assert_eq!(accepted, 20 + 20, "only the 40 hash bytes may change (refused: {refused:?})");
    }

    fn extension(oid: &'static rasn::types::Oid, critical: bool, value: &[u8]) -> Extension {
        Extension { extn_id: ObjectIdentifier::from(oid), critical, extn_value: OctetString::from_slice(value) }
    }

    /// An arbitrary OID no OCSP specification defines (under the "example" arc 1.3.6.1.4.1.32473).
    const UNKNOWN: &rasn::types::Oid = rasn::types::Oid::const_new(&[1, 3, 6, 1, 4, 1, 32473, 1]);

    /// A two-CertID request with `version`, these requestExtensions, and these
    /// singleRequestExtensions on the second CertID.
    fn request_with(version: i64, request_exts: Vec<Extension>, single_exts: Vec<Extension>) -> Vec<u8> {
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[1], &[2]], None);
        let mut request: rasn_ocsp::OcspRequest = rasn::der::decode(&der).unwrap();
        request.tbs_request.version = Integer::from(version);
        request.tbs_request.request_extensions =
            (!request_exts.is_empty()).then(|| rasn_pkix::Extensions::from(request_exts));
        request.tbs_request.request_list[1].single_request_extensions =
            (!single_exts.is_empty()).then(|| rasn_pkix::Extensions::from(single_exts));
        rasn::der::encode(&request).unwrap()
    }

    #[test]
    fn only_version_1_is_accepted() {
        assert!(parse(&request_with(0, vec![], vec![])).is_ok());
        assert_eq!(parse(&request_with(1, vec![], vec![])).unwrap_err(), Malformed::UnsupportedVersion("1".into()));
        assert!(matches!(parse(&request_with(-1, vec![], vec![])), Err(Malformed::UnsupportedVersion(_))));
    }

    #[test]
    fn unknown_critical_extensions_fail_unknown_non_critical_ones_are_ignored() {
        let unknown = |critical| extension(UNKNOWN, critical, &[0x05, 0x00]);
        let request_level =
            Malformed::UnknownCriticalExtension { oid: "1.3.6.1.4.1.32473.1".into(), place: ExtensionPlace::Request };
        assert_eq!(parse(&request_with(0, vec![unknown(true)], vec![])).unwrap_err(), request_level);
        assert_eq!(
            parse(&request_with(0, vec![unknown(true)], vec![])).unwrap_err().to_string(),
            "critical extension 1.3.6.1.4.1.32473.1 in requestExtensions is not understood"
        );
        assert_eq!(
            parse(&request_with(0, vec![], vec![unknown(true)])).unwrap_err(),
            Malformed::UnknownCriticalExtension {
                oid: "1.3.6.1.4.1.32473.1".into(),
                place: ExtensionPlace::SingleRequest(2)
            }
        );
        let request = parse(&request_with(0, vec![unknown(false)], vec![unknown(false)])).unwrap();
        assert_eq!(request.certs.len(), 2);
        assert!(request.nonce.is_none());
    }

    #[test]
    fn the_understood_extensions_pass_even_when_critical() {
        let nonce = extension(oids::OCSP_NONCE, true, &[0x04, 0x02, 7, 7]);
        let basic = rasn::der::encode(&vec![ObjectIdentifier::from(oids::OCSP_BASIC)]).unwrap();
        let acceptable = extension(oids::OCSP_ACCEPTABLE_RESPONSES, true, &basic);
        let ecdsa_sha256 = AlgorithmIdentifier {
            algorithm: ObjectIdentifier::from(rasn::types::Oid::const_new(&[1, 2, 840, 10045, 4, 3, 2])),
            parameters: None,
        };
        let preferred = rasn::der::encode(&vec![
            PreferredSignatureAlgorithm { sig_identifier: ecdsa_sha256.clone(), cert_identifier: None },
            PreferredSignatureAlgorithm { sig_identifier: ecdsa_sha256.clone(), cert_identifier: Some(ecdsa_sha256) },
        ])
        .unwrap();
        let preferred = extension(oids::OCSP_PREF_SIG_ALGS, true, &preferred);
        let request = parse(&request_with(0, vec![nonce, acceptable, preferred], vec![])).unwrap();
        assert_eq!(request.nonce.unwrap().len, Some(2));
    }

    #[test]
    fn recognised_but_unusable_critical_extensions_fail() {
        let fails_at = |request_exts: Vec<Extension>, single_exts: Vec<Extension>| match parse(&request_with(
            0,
            request_exts,
            single_exts,
        ))
        .unwrap_err()
        {
            Malformed::UnknownCriticalExtension { place, .. } => place,
            other => panic!("{other:?}"),
        };
        // jitocsp never forwards requests, so it cannot act on a service locator.
        let locator = |critical| extension(oids::OCSP_SERVICE_LOCATOR, critical, &[0x30, 0x00]);
        assert_eq!(fails_at(vec![], vec![locator(true)]), ExtensionPlace::SingleRequest(2));
        assert_eq!(fails_at(vec![locator(true)], vec![]), ExtensionPlace::Request);
        assert!(parse(&request_with(0, vec![], vec![locator(false)])).is_ok());
        // A nonce belongs in requestExtensions only.
        let nonce = |critical| extension(oids::OCSP_NONCE, critical, &[0x04, 0x01, 7]);
        assert_eq!(fails_at(vec![], vec![nonce(true)]), ExtensionPlace::SingleRequest(2));
        assert!(parse(&request_with(0, vec![], vec![nonce(false)])).unwrap().nonce.is_none());
        // Values that do not decode, or carry bytes after the value.
        for (oid, value) in [
            (oids::OCSP_NONCE, &[0x02, 0x01, 7][..]),
            (oids::OCSP_NONCE, &[0x04, 0x01, 7, 0][..]),
            (oids::OCSP_ACCEPTABLE_RESPONSES, &[0x04, 0x00][..]),
            (oids::OCSP_PREF_SIG_ALGS, &[0x30, 0x03, 0x02, 0x01, 0x01][..]),
        ] {
            assert_eq!(fails_at(vec![extension(oid, true, value)], vec![]), ExtensionPlace::Request, "{oid}");
            assert!(parse(&request_with(0, vec![extension(oid, false, value)], vec![])).is_ok(), "{oid}");
        }
    }

    #[test]
    fn checks_each_field() {
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 32], &[2; 20], &[&[1]], None);
        assert_eq!(parse(&der).unwrap_err(), Malformed::BadHashLength(20));
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[0x80]], None);
        assert!(matches!(parse(&der).unwrap_err(), Malformed::BadSerial(_)));
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[], None);
        assert_eq!(parse(&der).unwrap_err(), Malformed::NoCertIds);
        let many: Vec<&[u8]> = vec![&[1]; MAX_CERT_IDS + 1];
        let der = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &many, None);
        assert_eq!(parse(&der).unwrap_err(), Malformed::TooManyCertIds(MAX_CERT_IDS + 1));
    }
}
