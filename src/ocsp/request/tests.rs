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
    let ca = include_bytes!("../../../tests/fixtures/unit-ca.der");
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
