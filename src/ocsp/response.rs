//! Encoding OCSP responses (RFC 6960 section 4.2).
//!
//! Building a response is two steps with the signature in between:
//! [`encode_response_data`] gives the DER of `ResponseData` as a [`TbsResponseData`], the
//! signer signs exactly those bytes, and [`assemble`] wraps them, the algorithm and the
//! signature into a `BasicOCSPResponse` inside an `OCSPResponse` by concatenation. Nothing
//! that was signed is ever re-encoded, and since only the encoder makes a
//! [`TbsResponseData`], a signer is never handed anything else (an empty message from a
//! failed encoding, or bytes that are not a ResponseData).

use chrono::{DateTime, FixedOffset, Utc};
use rasn::types::{Integer, ObjectIdentifier, OctetString};
use rasn_ocsp::{CertId, CertStatus, ResponderId, ResponseData, RevokedInfo, SingleResponse};
use rasn_pkix::{CrlReason, Extension};

use super::der::{self, tlv_len, write_header};
use super::{oids, OcspErrorStatus, RevocationReason};

/// The status of one certificate, as it goes into a SingleResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatusAnswer {
    Good,
    Revoked {
        at: DateTime<Utc>,
        reason: RevocationReason,
    },
    Unknown,
    /// "revoked" for a serial the CA never issued (RFC 6960 section 4.4.8): revoked since the
    /// epoch with reason certificateHold, and the extended-revoke extension on the response.
    Unissued,
}

/// One SingleResponse to encode.
pub struct SingleAnswer<'a> {
    /// The request's CertID, echoed exactly.
    pub cert_id: &'a CertId,
    pub status: CertStatusAnswer,
    pub this_update: DateTime<Utc>,
    pub next_update: DateTime<Utc>,
}

/// The DER of a `ResponseData` made by [`encode_response_data`]: what a signer signs and
/// [`assemble`] embeds, byte for byte. It has no other constructor.
#[derive(Debug)]
pub struct TbsResponseData(Vec<u8>);

impl TbsResponseData {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `ResponseData` could not be encoded: nothing may be signed for this response.
#[derive(Debug, thiserror::Error)]
#[error("encoding ResponseData: {0}")]
pub struct EncodeError(#[source] rasn::error::EncodeError);

/// Encodes `ResponseData` with a byKey responder ID. `nonce` is the request's nonce
/// extnValue, echoed verbatim when the caller decided to honour it.
pub fn encode_response_data(
    responder_key_hash: &[u8],
    produced_at: DateTime<Utc>,
    answers: &[SingleAnswer<'_>],
    nonce: Option<&[u8]>,
) -> Result<TbsResponseData, EncodeError> {
    let mut extensions = Vec::new();
    if let Some(value) = nonce {
        extensions.push(Extension {
            extn_id: ObjectIdentifier::from(oids::OCSP_NONCE),
            critical: false,
            extn_value: OctetString::from_slice(value),
        });
    }
    if answers.iter().any(|a| a.status == CertStatusAnswer::Unissued) {
        extensions.push(Extension {
            extn_id: ObjectIdentifier::from(oids::OCSP_EXTENDED_REVOKE),
            critical: false,
            extn_value: OctetString::from_static(&[0x05, 0x00]),
        });
    }
    let data = ResponseData {
        version: Integer::ZERO,
        responder_id: ResponderId::ByKey(OctetString::from_slice(responder_key_hash)),
        produced_at: generalized_time(produced_at),
        responses: answers.iter().map(single_response).collect(),
        response_extensions: (!extensions.is_empty()).then(|| extensions.into()),
    };
    rasn::der::encode(&data).map(TbsResponseData).map_err(EncodeError)
}

fn single_response(answer: &SingleAnswer<'_>) -> SingleResponse {
    let cert_status = match answer.status {
        CertStatusAnswer::Good => CertStatus::Good,
        CertStatusAnswer::Unknown => CertStatus::Unknown(()),
        // BR 7.2.2 / 7.3: reason unspecified is expressed by leaving revocationReason out.
        CertStatusAnswer::Revoked { at, reason } => CertStatus::Revoked(RevokedInfo {
            revocation_time: generalized_time(at),
            revocation_reason: crl_reason(reason),
        }),
        CertStatusAnswer::Unissued => CertStatus::Revoked(RevokedInfo {
            revocation_time: generalized_time(DateTime::UNIX_EPOCH),
            revocation_reason: Some(CrlReason::CertificateHold),
        }),
    };
    SingleResponse {
        cert_id: answer.cert_id.clone(),
        cert_status,
        this_update: generalized_time(answer.this_update),
        next_update: Some(generalized_time(answer.next_update)),
        single_extensions: None,
    }
}

/// Whole seconds in UTC: DER GeneralizedTime must end in Z and rasn would otherwise encode a
/// fraction (rasn issue 550).
fn generalized_time(t: DateTime<Utc>) -> DateTime<FixedOffset> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(DateTime::UNIX_EPOCH).fixed_offset()
}

fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    Some(match reason {
        RevocationReason::Unspecified => return None,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::CertificateHold => CrlReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => CrlReason::AaCompromise,
    })
}

/// `OBJECT IDENTIFIER id-pkix-ocsp-basic`, encoded.
const OCSP_BASIC_OID_DER: &[u8] = &[0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// Wraps signed `ResponseData` into a successful `OCSPResponse`.
///
/// `signature_algorithm` is a DER AlgorithmIdentifier, `signature` the signature value (the
/// BIT STRING contents without the unused-bits octet), `certs` DER certificates to include
/// (a delegated responder certificate), in order.
pub fn assemble(
    tbs_response_data: &TbsResponseData,
    signature_algorithm: &[u8],
    signature: &[u8],
    certs: &[&[u8]],
) -> Vec<u8> {
    let tbs_response_data = tbs_response_data.as_bytes();
    let signature_len = tlv_len(1 + signature.len());
    let certs_seq_len: usize = certs.iter().map(|c| c.len()).sum();
    let certs_len = if certs.is_empty() { 0 } else { tlv_len(tlv_len(certs_seq_len)) };
    let basic_content = tbs_response_data.len() + signature_algorithm.len() + signature_len + certs_len;
    let basic_len = tlv_len(basic_content);
    let response_bytes_content = OCSP_BASIC_OID_DER.len() + tlv_len(basic_len);
    let response_bytes_len = tlv_len(response_bytes_content);
    let outer_content = 3 + tlv_len(response_bytes_len);

    let mut out = Vec::with_capacity(tlv_len(outer_content));
    write_header(&mut out, der::TAG_SEQUENCE, outer_content);
    out.extend_from_slice(&[der::TAG_ENUMERATED, 0x01, 0x00]);
    write_header(&mut out, der::TAG_CONTEXT_0, response_bytes_len);
    write_header(&mut out, der::TAG_SEQUENCE, response_bytes_content);
    out.extend_from_slice(OCSP_BASIC_OID_DER);
    write_header(&mut out, der::TAG_OCTET_STRING, basic_len);
    write_header(&mut out, der::TAG_SEQUENCE, basic_content);
    out.extend_from_slice(tbs_response_data);
    out.extend_from_slice(signature_algorithm);
    write_header(&mut out, der::TAG_BIT_STRING, 1 + signature.len());
    out.push(0x00);
    out.extend_from_slice(signature);
    if !certs.is_empty() {
        write_header(&mut out, der::TAG_CONTEXT_0, tlv_len(certs_seq_len));
        write_header(&mut out, der::TAG_SEQUENCE, certs_seq_len);
        for cert in certs {
            out.extend_from_slice(cert);
        }
    }
    debug_assert_eq!(out.len(), out.capacity());
    out
}

/// The unsigned `OCSPResponse` for an error status.
pub fn error_response(status: OcspErrorStatus) -> &'static [u8] {
    match status {
        OcspErrorStatus::MalformedRequest => &[0x30, 0x03, 0x0a, 0x01, 0x01],
        OcspErrorStatus::InternalError => &[0x30, 0x03, 0x0a, 0x01, 0x02],
        OcspErrorStatus::TryLater => &[0x30, 0x03, 0x0a, 0x01, 0x03],
        OcspErrorStatus::Unauthorized => &[0x30, 0x03, 0x0a, 0x01, 0x06],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ocsp::request::tests::encode_request;
    use crate::ocsp::HashAlgorithm;
    use chrono::TimeZone;
    use rasn_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};

    /// A real ResponseData with one answer, `status`, produced now.
    pub(crate) fn one_answer(status: CertStatusAnswer) -> TbsResponseData {
        let request = encode_request(HashAlgorithm::Sha256, false, &[1; 32], &[2; 32], &[&[5]], None);
        let request = crate::ocsp::request::parse(&request).unwrap();
        let now = Utc::now();
        let answers = [SingleAnswer { cert_id: &request.certs[0].cert_id, status, this_update: now, next_update: now }];
        encode_response_data(&[9; 20], now, &answers, None).unwrap()
    }

    #[test]
    fn assembled_response_decodes_and_carries_the_signed_bytes_verbatim() {
        let request = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[5], &[6]], None);
        let request = crate::ocsp::request::parse(&request).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 10, 7, 0).unwrap() + chrono::Duration::milliseconds(250);
        let next = now + chrono::Duration::hours(96);
        let answers = [
            SingleAnswer {
                cert_id: &request.certs[0].cert_id,
                status: CertStatusAnswer::Good,
                this_update: now,
                next_update: next,
            },
            SingleAnswer {
                cert_id: &request.certs[1].cert_id,
                status: CertStatusAnswer::Revoked { at: now, reason: RevocationReason::KeyCompromise },
                this_update: now,
                next_update: next,
            },
        ];
        let tbs = encode_response_data(&[9; 20], now, &answers, Some(&[0x04, 0x01, 0x42])).unwrap();
        let algorithm = [0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let der = assemble(&tbs, &algorithm, &[0xaa; 70], &[]);

        let response: OcspResponse = rasn::der::decode(&der).unwrap();
        assert_eq!(response.status, OcspResponseStatus::Successful);
        let bytes = response.bytes.unwrap();
        assert_eq!(bytes.r#type, ObjectIdentifier::from(oids::OCSP_BASIC));
        // The signed ResponseData appears byte for byte inside the response.
        let tbs = tbs.as_bytes();
        assert!(bytes.response.windows(tbs.len()).any(|w| w == tbs));
        let basic: BasicOcspResponse = rasn::der::decode(&bytes.response).unwrap();
        assert_eq!(basic.signature.len(), 70 * 8);
        assert!(basic.certs.is_none());
        let data = basic.tbs_response_data;
        assert_eq!(data.responses.len(), 2);
        assert_eq!(data.responses[0].cert_id, request.certs[0].cert_id);
        assert_eq!(data.responses[0].cert_status, CertStatus::Good);
        assert!(matches!(&data.responses[1].cert_status,
            CertStatus::Revoked(info) if info.revocation_reason == Some(CrlReason::KeyCompromise)));
        let ext = data.response_extensions.unwrap();
        assert_eq!(ext[0].extn_value.as_ref(), &[0x04, 0x01, 0x42]);
    }

    #[test]
    fn included_certificates_close_the_basic_response() {
        let cert = [0x30, 0x03, 0x02, 0x01, 0x01];
        let empty_sequence = TbsResponseData(vec![0x30, 0x00]);
        let without = assemble(&empty_sequence, &[0x30, 0x00], &[1, 2], &[]);
        let with = assemble(&empty_sequence, &[0x30, 0x00], &[1, 2], &[&cert, &cert]);
        assert_eq!(with.len(), without.len() + 4 + 2 * cert.len());
        assert!(with.ends_with(&[0xa0, 0x0c, 0x30, 0x0a, 0x30, 0x03, 0x02, 0x01, 0x01, 0x30, 0x03, 0x02, 0x01, 0x01]));
        let outer = crate::ocsp::der::read_tlv(&with).unwrap();
        assert_eq!((outer.0, outer.1.len() + 2, outer.2.len()), (0x30, with.len(), 0));
    }

    #[test]
    fn times_are_whole_seconds_in_utc() {
        let request = encode_request(HashAlgorithm::Sha1, true, &[1; 20], &[2; 20], &[&[5]], None);
        let request = crate::ocsp::request::parse(&request).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(123_456);
        let answers = [SingleAnswer {
            cert_id: &request.certs[0].cert_id,
            status: CertStatusAnswer::Good,
            this_update: now,
            next_update: now,
        }];
        let tbs = encode_response_data(&[9; 20], now, &answers, None).unwrap();
        let tbs = tbs.as_bytes();
        let needle = b"20260102030405Z";
        assert_eq!(tbs.windows(needle.len()).filter(|w| w == needle).count(), 3, "producedAt, thisUpdate, nextUpdate");
        assert!(!tbs.windows(2).any(|w| w == b"5."));
    }

    #[test]
    fn unissued_gets_epoch_hold_and_the_extended_revoke_extension() {
        let tbs = one_answer(CertStatusAnswer::Unissued);
        let data: ResponseData = rasn::der::decode(tbs.as_bytes()).unwrap();
        let CertStatus::Revoked(info) = &data.responses[0].cert_status else { panic!("not revoked") };
        assert_eq!(info.revocation_time.timestamp(), 0);
        assert_eq!(info.revocation_reason, Some(CrlReason::CertificateHold));
        let ext = data.response_extensions.unwrap();
        assert_eq!(ext[0].extn_id, ObjectIdentifier::from(oids::OCSP_EXTENDED_REVOKE));
    }

    #[test]
    fn error_responses_decode_to_their_status() {
        for (status, expected) in [
            (OcspErrorStatus::MalformedRequest, OcspResponseStatus::MalformedRequest),
            (OcspErrorStatus::InternalError, OcspResponseStatus::InternalError),
            (OcspErrorStatus::TryLater, OcspResponseStatus::TryLater),
            (OcspErrorStatus::Unauthorized, OcspResponseStatus::Unauthorized),
        ] {
            let decoded: OcspResponse = rasn::der::decode(error_response(status)).unwrap();
            assert_eq!(decoded.status, expected);
            assert!(decoded.bytes.is_none());
        }
    }
}
