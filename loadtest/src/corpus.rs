//! The synthetic certificate population and the requests made about it.
//!
//! Everything is a pure function of `(corpus seed, issuer position, certificate index)`, so the
//! seeder (which writes Postgres rows) and the generator (which asks about them and checks the
//! answers) agree without reading anything back:
//! - serial: 16 octets, an 8-octet prefix per issuer and the 8-octet image of the index under a
//!   bijective mixer (distinct per index, and its last octet uniform, which is what the CDN
//!   purge slices on, like Let's Encrypt's `Edge-Cache-Tag` of the serial's last two hex digits);
//! - status: revoked for a chosen share of indices (hash of the index), good otherwise;
//! - popularity: index = Zipf rank - 1, so index 0 is the most requested certificate.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use jitocsp::ocsp::request::{self, CertIdParts, CertIdVariant};
use jitocsp::x509::CertIdHashes;
use p256::ecdsa::VerifyingKey;
use x509_parser::prelude::FromDer as _;

use crate::verify::IssuerKey;

/// SplitMix64's finaliser: a bijection on u64 with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// What Postgres says about a certificate, and so what its response must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked,
}

/// The CertID hash algorithm of a request (parameters NULL, as OpenSSL sends them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    pub fn variant(self) -> CertIdVariant {
        match self {
            HashAlg::Sha1 => CertIdVariant::Sha1Null,
            HashAlg::Sha256 => CertIdVariant::Sha256Null,
        }
    }
}

/// One issuer of the corpus: its name in jitocsp, CertID hashes and public key.
pub struct Issuer {
    pub name: String,
    pub hashes: CertIdHashes,
    pub key: IssuerKey,
    prefix: [u8; 8],
    salt: u64,
}

impl Issuer {
    /// Reads `NAME=PATH` (the issuer's name in jitocsp and its CA certificate, PEM or DER).
    pub fn load(spec: &str, position: usize, seed: u64) -> anyhow::Result<Issuer> {
        let (name, path) =
            spec.split_once('=').ok_or_else(|| anyhow!("--issuer {spec:?}: expected NAME=CA_CERT_PATH"))?;
        let certs = jitocsp::x509::load_pem_or_der(Path::new(path))?;
        let der = certs.first().ok_or_else(|| anyhow!("{path}: no certificate"))?;
        let hashes = jitocsp::x509::certid_hashes(der)?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| anyhow!("{path}: not a certificate: {e}"))?;
        let key = VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data)
            .map_err(|_| anyhow!("{path}: the CA key is not an EC P-256 key (only P-256 signatures are verified)"))?;
        Ok(Issuer::new(name, hashes, key, position, seed))
    }

    pub fn new(name: &str, hashes: CertIdHashes, key: VerifyingKey, position: usize, seed: u64) -> Issuer {
        let mut prefix = mix64(seed ^ (position as u64 + 1).wrapping_mul(GOLDEN)).to_be_bytes();
        // Positive, minimal, 16 octets: the first octet is non-zero with its top bit clear.
        prefix[0] = (prefix[0] & 0x3f) | 0x40;
        let salt = mix64(seed.wrapping_add(0x5eed) ^ (position as u64).wrapping_mul(GOLDEN));
        Issuer { name: name.to_owned(), hashes, key: IssuerKey::from(&key), prefix, salt }
    }

    /// The serial of certificate `index` (minimal DER INTEGER contents, 16 octets).
    pub fn serial(&self, index: u64) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&self.prefix);
        s[8..].copy_from_slice(&mix64(index ^ self.salt).to_be_bytes());
        s
    }

    /// The request about certificate `index` (one CertID, no nonce: what browsers and CDNs
    /// send), and its CertID, DER, exactly as a response must echo it.
    pub fn request(&self, index: u64, alg: HashAlg) -> OcspAsk {
        let serial = self.serial(index);
        let id = CertIdParts::new(&self.hashes, alg.variant(), &serial);
        OcspAsk { cert_id: id.to_der(), der: request::encode(&[id], None) }
    }
}

/// One OCSP request and the CertID its answer must echo.
pub struct OcspAsk {
    pub cert_id: Vec<u8>,
    pub der: Vec<u8>,
}

/// The population: issuers, certificates per issuer, revoked share, and the seed that fixes them.
pub struct Corpus {
    pub issuers: Vec<Issuer>,
    pub count: u64,
    pub revoked_per_million: u64,
    pub seed: u64,
}

impl Corpus {
    pub fn new(issuers: Vec<Issuer>, count: u64, revoked_share: f64, seed: u64) -> anyhow::Result<Corpus> {
        if issuers.is_empty() {
            bail!("at least one --issuer is needed");
        }
        if count == 0 {
            bail!("--count must be at least 1");
        }
        if !(0.0..=1.0).contains(&revoked_share) {
            bail!("--revoked-share must be between 0 and 1");
        }
        Ok(Corpus { issuers, count, revoked_per_million: (revoked_share * 1e6).round() as u64, seed })
    }

    pub fn load(specs: &[String], count: u64, revoked_share: f64, seed: u64) -> anyhow::Result<Corpus> {
        let issuers = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Issuer::load(s, i, seed).with_context(|| format!("--issuer {s}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Corpus::new(issuers, count, revoked_share, seed)
    }

    pub fn status(&self, issuer: usize, index: u64) -> Status {
        let h = mix64(index ^ mix64(self.seed ^ 0xdead_beef ^ (issuer as u64).wrapping_mul(GOLDEN)));
        if h % 1_000_000 < self.revoked_per_million {
            Status::Revoked
        } else {
            Status::Good
        }
    }
}

/// The slice of the CDN cache a certificate belongs to: the serial's last octet (0..=255).
pub fn purge_slice(serial: &[u8; 16]) -> u8 {
    serial[15]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitocsp::serial::Serial;

    fn test_issuer(position: usize) -> Issuer {
        let hashes = CertIdHashes { name_sha1: [1; 20], key_sha1: [2; 20], name_sha256: [3; 32], key_sha256: [4; 32] };
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        Issuer::new("t", hashes, *secret.verifying_key(), position, 42)
    }

    #[test]
    fn serials_are_minimal_positive_and_distinct() {
        let issuer = test_issuer(0);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let s = issuer.serial(i);
            assert!(s[0] != 0 && s[0] & 0x80 == 0);
            assert_eq!(Serial::from_signed_be(&s).unwrap().as_bytes(), &s[..]);
            assert!(seen.insert(s));
        }
        assert_ne!(test_issuer(1).serial(0)[..8], issuer.serial(0)[..8]);
    }

    #[test]
    fn requests_parse_with_the_responders_decoder() {
        let issuer = test_issuer(0);
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            let ask = issuer.request(5, alg);
            let parsed = jitocsp::ocsp::request::parse(&ask.der).expect("jitocsp parses our request");
            assert!(ask.der.windows(ask.cert_id.len()).any(|w| w == ask.cert_id), "the CertID is the request's");
            assert_eq!(parsed.certs.len(), 1);
            assert_eq!(parsed.certs[0].serial, Serial::from_signed_be(&issuer.serial(5)).unwrap());
            let (name, key) = (parsed.certs[0].issuer_name_hash(), parsed.certs[0].issuer_key_hash());
            match alg {
                HashAlg::Sha1 => assert_eq!((name, key), (&[1u8; 20][..], &[2u8; 20][..])),
                HashAlg::Sha256 => assert_eq!((name, key), (&[3u8; 32][..], &[4u8; 32][..])),
            }
        }
    }

    #[test]
    fn revoked_share_is_close_to_the_asked_one() {
        let corpus = Corpus::new(vec![test_issuer(0)], 100_000, 0.1, 9).unwrap();
        let revoked = (0..100_000).filter(|i| corpus.status(0, *i) == Status::Revoked).count();
        assert!((9_000..11_000).contains(&revoked), "{revoked}");
    }

    #[test]
    fn purge_slices_are_uniform() {
        let issuer = test_issuer(0);
        let low = (0..16_000).filter(|i| purge_slice(&issuer.serial(*i)) < 16).count();
        assert!((800..1200).contains(&low), "{low}");
    }
}
