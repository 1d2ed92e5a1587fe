//! Key kinds and the little DER every signer needs: AlgorithmIdentifiers, SubjectPublicKeyInfo,
//! and ECDSA signatures converted from the raw `r || s` of PKCS#11 to `ECDSA-Sig-Value`.

use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// AlgorithmIdentifier { ecdsa-with-SHA256 }, parameters absent (RFC 5758 section 3.2).
pub const ECDSA_WITH_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// AlgorithmIdentifier { ecdsa-with-SHA384 }, parameters absent (RFC 5758 section 3.2).
pub const ECDSA_WITH_SHA384: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
/// AlgorithmIdentifier { sha256WithRSAEncryption, NULL } (RFC 4055 section 5: parameters NULL).
pub const SHA256_WITH_RSA: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];

/// OID contents (no tag, no length).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// DigestInfo prefix for SHA-256 (RFC 8017 section 9.2 note 1), for tokens that only have
/// raw CKM_RSA_PKCS.
pub const SHA256_DIGEST_INFO_PREFIX: &[u8] =
    &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];

/// A named elliptic curve jitocsp signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Bytes of one coordinate (and of r and s).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_PRIME256V1,
            Curve::P384 => OID_SECP384R1,
        }
    }

    /// The curve named by an OID's contents.
    pub fn from_oid(oid: &[u8]) -> Option<Curve> {
        match oid {
            OID_PRIME256V1 => Some(Curve::P256),
            OID_SECP384R1 => Some(Curve::P384),
            _ => None,
        }
    }

    /// The curve named by DER ECParameters (a namedCurve OID, as in CKA_EC_PARAMS).
    pub fn from_ec_params(der: &[u8]) -> Option<Curve> {
        match der {
            [0x06, len, oid @ ..] if *len as usize == oid.len() => Curve::from_oid(oid),
            _ => None,
        }
    }
}

/// What kind of key a signer holds; decides the signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ec(Curve),
    Rsa { bits: usize },
}

impl KeyKind {
    /// The AlgorithmIdentifier of the signatures made with this key: ecdsa-with-SHA256 for
    /// P-256, ecdsa-with-SHA384 for P-384, sha256WithRSAEncryption for RSA.
    pub fn algorithm_der(self) -> &'static [u8] {
        match self {
            KeyKind::Ec(Curve::P256) => ECDSA_WITH_SHA256,
            KeyKind::Ec(Curve::P384) => ECDSA_WITH_SHA384,
            KeyKind::Rsa { .. } => SHA256_WITH_RSA,
        }
    }

    pub fn name(self) -> String {
        match self {
            KeyKind::Ec(Curve::P256) => "ECDSA P-256".into(),
            KeyKind::Ec(Curve::P384) => "ECDSA P-384".into(),
            KeyKind::Rsa { bits } => format!("RSA-{bits}"),
        }
    }

    /// The kind of the key in a DER SubjectPublicKeyInfo, if jitocsp can sign with it.
    pub fn from_spki(spki: &[u8]) -> Option<KeyKind> {
        let (_, info) = SubjectPublicKeyInfo::from_der(spki).ok()?;
        let algorithm = info.algorithm.algorithm.as_bytes();
        if algorithm == OID_EC_PUBLIC_KEY {
            let curve = info.algorithm.parameters.as_ref()?.as_oid().ok()?;
            Curve::from_oid(curve.as_bytes()).map(KeyKind::Ec)
        } else if algorithm == OID_RSA_ENCRYPTION {
            match info.parsed().ok()? {
                PublicKey::RSA(rsa) => Some(KeyKind::Rsa { bits: rsa.key_size() }),
                _ => None,
            }
        } else {
            None
        }
    }
}

pub use crate::ocsp::der::tlv;

/// A DER INTEGER from unsigned big-endian bytes.
pub fn unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().take_while(|b| **b == 0).count();
    let digits = &bytes[start..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(0x02, &content)
}

fn bit_string(bits: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bits.len() + 1);
    content.push(0);
    content.extend_from_slice(bits);
    tlv(0x03, &content)
}

/// SubjectPublicKeyInfo of an EC key from its uncompressed point.
pub fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let algorithm = tlv(0x30, &[tlv(0x06, OID_EC_PUBLIC_KEY), tlv(0x06, curve.oid())].concat());
    tlv(0x30, &[algorithm, bit_string(point)].concat())
}

/// SubjectPublicKeyInfo of an RSA key from its modulus and public exponent (big-endian).
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    rsa_spki_from_pkcs1(&tlv(0x30, &[unsigned_integer(modulus), unsigned_integer(exponent)].concat()))
}

/// SubjectPublicKeyInfo of an RSA key from its DER RSAPublicKey (PKCS#1).
pub fn rsa_spki_from_pkcs1(rsa_public_key: &[u8]) -> Vec<u8> {
    let algorithm = tlv(0x30, &[tlv(0x06, OID_RSA_ENCRYPTION), vec![0x05, 0x00]].concat());
    tlv(0x30, &[algorithm, bit_string(rsa_public_key)].concat())
}

/// Converts a raw `r || s` ECDSA signature (PKCS#11 CKM_ECDSA output) to DER ECDSA-Sig-Value.
pub fn ecdsa_raw_to_der(raw: &[u8], curve: Curve) -> Option<Vec<u8>> {
    if raw.len() != 2 * curve.field_len() {
        return None;
    }
    let (r, s) = raw.split_at(curve.field_len());
    Some(tlv(0x30, &[unsigned_integer(r), unsigned_integer(s)].concat()))
}

/// The uncompressed point in a CKA_EC_POINT value: DER OCTET STRING per PKCS#11, though some
/// tokens return the bare point.
pub fn ec_point_from_attribute(value: &[u8], curve: Curve) -> Option<Vec<u8>> {
    let point_len = 2 * curve.field_len() + 1;
    if value.len() == point_len && value[0] == 0x04 {
        return Some(value.to_vec());
    }
    let content = match value {
        [0x04, len, rest @ ..] if (*len as usize) < 0x80 && *len as usize == rest.len() => rest,
        [0x04, 0x81, len, rest @ ..] if *len as usize == rest.len() => rest,
        _ => return None,
    };
    (content.len() == point_len && content[0] == 0x04).then(|| content.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_spki_of_software_keys() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = key.verifying_key().to_sec1_point(false);
        let spki = ec_spki(Curve::P256, point.as_bytes());
        use p256::pkcs8::EncodePublicKey;
        assert_eq!(spki, key.verifying_key().to_public_key_der().unwrap().as_bytes());
        assert_eq!(KeyKind::from_spki(&spki), Some(KeyKind::Ec(Curve::P256)));
        assert_eq!(KeyKind::from_spki(b"junk"), None);
        let mut modulus = vec![0xc5u8; 256];
        modulus[255] = 0x01;
        let spki = rsa_spki(&modulus, &[0x01, 0x00, 0x01]);
        assert_eq!(KeyKind::from_spki(&spki), Some(KeyKind::Rsa { bits: 2048 }));
    }

    #[test]
    fn raw_signatures_become_minimal_der() {
        let mut raw = vec![0u8; 64];
        raw[1] = 0x80; // r = 0x80.. after one leading zero byte: needs a sign octet
        raw[32] = 0x01;
        let der = ecdsa_raw_to_der(&raw, Curve::P256).unwrap();
        let signature = p256::ecdsa::Signature::from_der(&der);
        assert!(signature.is_ok(), "{der:02x?}");
        assert_eq!(&der[2..5], &[0x02, 32, 0x00]);
        assert_eq!(der[36], 0x02);
        assert!(ecdsa_raw_to_der(&raw, Curve::P384).is_none());
    }

    #[test]
    fn ec_points_wrapped_or_bare() {
        let point: Vec<u8> = std::iter::once(4).chain(1..=96).collect();
        assert_eq!(ec_point_from_attribute(&point, Curve::P384).unwrap(), point);
        let wrapped = tlv(0x04, &point);
        assert_eq!(ec_point_from_attribute(&wrapped, Curve::P384).unwrap(), point);
        let short: Vec<u8> = std::iter::once(4).chain(1..=64).collect();
        assert_eq!(ec_point_from_attribute(&tlv(0x04, &short), Curve::P256).unwrap(), short);
        assert!(ec_point_from_attribute(&tlv(0x04, &short), Curve::P384).is_none());
        assert_eq!(Curve::from_ec_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]), Some(Curve::P384));
    }
}
