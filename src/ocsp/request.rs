//! Decoding OCSP requests (RFC 6960 section 4.1).
//!
//! rasn's decoder is lenient (it accepts some BER), which is fine for reading a request but
//! means the raw request bytes are never a cache key: everything downstream keys on the
//! normalised (issuer, serial, CertID variant) instead.

use bytes::Bytes;
use rasn::types::IntegerType;
use rasn_ocsp::CertId;

use super::{oids, HashAlgorithm};
use crate::cache::keys::CertIdVariant;
use crate::serial::{Serial, SerialError};

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

/// Why a request is a malformedRequest. Each names the first problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("request is not a DER OCSPRequest: {0}")]
    Undecodable(String),
    #[error("request has {0} bytes after the OCSPRequest")]
    TrailingData(usize),
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
    let list = request.tbs_request.request_list;
    if list.is_empty() {
        return Err(Malformed::NoCertIds);
    }
    if list.len() > MAX_CERT_IDS {
        return Err(Malformed::TooManyCertIds(list.len()));
    }
    let certs = list.into_iter().map(|r| check_cert_id(r.req_cert)).collect::<Result<Vec<_>, _>>()?;
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
    let variant = match (hash, null_parameters) {
        (HashAlgorithm::Sha1, true) => CertIdVariant::Sha1Null,
        (HashAlgorithm::Sha1, false) => CertIdVariant::Sha1Absent,
        (HashAlgorithm::Sha256, true) => CertIdVariant::Sha256Null,
        (HashAlgorithm::Sha256, false) => CertIdVariant::Sha256Absent,
    };
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

    /// Encodes a request for `serial` with the given hash algorithm and issuer hashes.
    pub(crate) fn encode_request(
        hash: HashAlgorithm,
        null_params: bool,
        name_hash: &[u8],
        key_hash: &[u8],
        serials: &[&[u8]],
        nonce_extn_value: Option<&[u8]>,
    ) -> Vec<u8> {
        let oid = match hash {
            HashAlgorithm::Sha1 => oids::SHA1,
            HashAlgorithm::Sha256 => oids::SHA256,
        };
        let request_list = serials
            .iter()
            .map(|serial| Request {
                req_cert: CertId {
                    hash_algorithm: AlgorithmIdentifier {
                        algorithm: ObjectIdentifier::from(oid),
                        parameters: null_params.then(|| Any::new(vec![0x05, 0x00])),
                    },
                    issuer_name_hash: OctetString::from_slice(name_hash),
                    issuer_key_hash: OctetString::from_slice(key_hash),
                    serial_number: Integer::try_from_signed_bytes(serial, rasn::Codec::Der).unwrap(),
                },
                single_request_extensions: None,
            })
            .collect();
        let request_extensions = nonce_extn_value.map(|v| {
            rasn_pkix::Extensions::from(vec![Extension {
                extn_id: ObjectIdentifier::from(oids::OCSP_NONCE),
                critical: false,
                extn_value: OctetString::from_slice(v),
            }])
        });
        rasn::der::encode(&rasn_ocsp::OcspRequest {
            tbs_request: TbsRequest { version: Integer::ZERO, requestor_name: None, request_list, request_extensions },
            optional_signature: None,
        })
        .unwrap()
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
        // Every single-byte corruption either decodes to something checked or is refused.
        for i in 0..der.len() {
            let mut corrupt = der.clone();
            corrupt[i] ^= 0xff;
            let _ = parse(&corrupt);
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
