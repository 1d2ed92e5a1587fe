//! Software signer: a private key read from a PEM file (`file:PATH`).
//!
//! Keys: ECDSA P-256 and P-384 and RSA (2048 to 8192 bits), in PKCS#8 (`PRIVATE KEY`), SEC1
//! (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM. Every implementation used is
//! constant-time: ring (assembly-backed, BoringSSL-derived) for P-384 and RSA, and for P-256
//! either ring (the default) or the pure-Rust `p256` crate, chosen by `signing.p256_backend`
//! so that both can be measured side by side. The `rsa` crate is never used for signing
//! (RUSTSEC-2023-0071).
//!
//! ECDSA takes tens of microseconds, so it runs inline on the calling worker; an RSA signature
//! takes hundreds, so it moves to a blocking thread. Either way the pipeline's signing limiter
//! bounds how many run at once.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use pkcs8::der::Decode;
use ring::rand::SystemRandom;
use ring::signature::{self as rs, EcdsaKeyPair, KeyPair, RsaKeyPair};

use super::algorithm::{self, Curve, KeyKind};
use super::{P256Backend, Signer, SignerError};
use crate::ocsp::response::TbsResponseData;

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

enum Key {
    /// Pure-Rust P-256 (RustCrypto `p256`).
    P256(p256::ecdsa::SigningKey),
    /// ring ECDSA, P-256 or P-384, DER signatures.
    RingEcdsa(EcdsaKeyPair),
    /// ring RSA, PKCS#1 v1.5 with SHA-256.
    RingRsa(RsaKeyPair),
}

/// A private key held in process memory.
pub struct SoftwareSigner {
    key: Arc<Key>,
    rng: SystemRandom,
    kind: KeyKind,
    spki_der: Vec<u8>,
    description: String,
}

impl SoftwareSigner {
    /// Reads a PKCS#8, SEC1 or PKCS#1 PEM private key file (P-256 keys with the default backend).
    pub fn from_pem_file(path: &str) -> Result<Self, SignerError> {
        Self::from_pem_file_with(path, P256Backend::default())
    }

    /// Reads a PKCS#8, SEC1 or PKCS#1 PEM private key file; P-256 keys use `backend`.
    pub fn from_pem_file_with(path: &str, backend: P256Backend) -> Result<Self, SignerError> {
        let spec = format!("file:{path}");
        let pem = crate::secret_file::read(std::path::Path::new(path)).map_err(|e| SignerError::Open {
            spec: spec.clone(),
            reason: format!("key file: {}", crate::secret_file::error_chain(&e)),
        })?;
        Self::from_pem(&pem, backend, &spec)
    }

    /// As [`SoftwareSigner::from_pem_file`], for the file's contents; `spec` names them.
    pub fn from_pem(pem: &[u8], backend: P256Backend, spec: &str) -> Result<Self, SignerError> {
        let open_error = |reason: String| SignerError::Open { spec: spec.to_owned(), reason };
        let blocks = pem::parse_many(pem).map_err(|e| open_error(format!("malformed PEM: {e}")))?;
        let Some(block) = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
            return Err(open_error("no PRIVATE KEY PEM block in the file".into()));
        };
        let rng = SystemRandom::new();
        let der = block.contents();
        let (key, kind) = match block.tag() {
            "RSA PRIVATE KEY" => rsa_key(RsaKeyPair::from_der(der).map_err(|e| open_error(format!("RSA key: {e}")))?),
            "EC PRIVATE KEY" => ec_key_from_sec1(der, None, backend, &rng).map_err(open_error)?,
            "PRIVATE KEY" => {
                let info = pkcs8::PrivateKeyInfoRef::from_der(der)
                    .map_err(|e| open_error(format!("not a PKCS#8 private key: {e}")))?;
                let oid = info.algorithm.oid.as_bytes();
                if oid == OID_RSA_ENCRYPTION {
                    rsa_key(RsaKeyPair::from_pkcs8(der).map_err(|e| open_error(format!("RSA key: {e}")))?)
                } else if oid == OID_EC_PUBLIC_KEY {
                    let curve = info
                        .algorithm
                        .parameters
                        .and_then(|p| p.decode_as::<pkcs8::ObjectIdentifier>().ok())
                        .and_then(|oid| Curve::from_oid(oid.as_bytes()));
                    let curve =
                        curve.ok_or_else(|| open_error("EC key on a curve other than P-256 or P-384".into()))?;
                    let public = info.public_key.as_ref().and_then(|p| p.as_bytes());
                    ec_key_from_sec1(info.private_key.as_bytes(), Some((curve, public)), backend, &rng)
                        .map_err(open_error)?
                } else {
                    return Err(open_error(format!(
                        "unsupported key algorithm {}: expected EC P-256, EC P-384 or RSA",
                        info.algorithm.oid
                    )));
                }
            }
            other => {
                return Err(open_error(format!("unsupported PEM block {other:?} (encrypted keys are not supported)")))
            }
        };
        Self::new(key, kind, rng, spec)
    }

    fn new(key: Key, kind: KeyKind, rng: SystemRandom, spec: &str) -> Result<Self, SignerError> {
        let spki_der = match &key {
            Key::P256(key) => algorithm::ec_spki(Curve::P256, key.verifying_key().to_sec1_point(false).as_bytes()),
            Key::RingEcdsa(pair) => match kind {
                KeyKind::Ec(curve) => algorithm::ec_spki(curve, pair.public_key().as_ref()),
                KeyKind::Rsa { .. } => unreachable!("ring ECDSA key of RSA kind"),
            },
            Key::RingRsa(pair) => algorithm::rsa_spki_from_pkcs1(pair.public().as_ref()),
        };
        let backend = match &key {
            Key::P256(_) => "p256",
            _ => "ring",
        };
        Ok(SoftwareSigner {
            key: Arc::new(key),
            rng,
            kind,
            spki_der,
            description: format!("{} ({backend}) {spec}", kind.name()),
        })
    }

    /// The kind of key held.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

fn rsa_key(pair: RsaKeyPair) -> (Key, KeyKind) {
    let bits = pair.public().modulus_len() * 8;
    (Key::RingRsa(pair), KeyKind::Rsa { bits })
}

/// An EC key from a SEC1 ECPrivateKey; `outer` carries the curve (and maybe the public key) of
/// an enclosing PKCS#8 structure.
fn ec_key_from_sec1(
    der: &[u8],
    outer: Option<(Curve, Option<&[u8]>)>,
    backend: P256Backend,
    rng: &SystemRandom,
) -> Result<(Key, KeyKind), String> {
    let sec1 = sec1::EcPrivateKey::from_der(der).map_err(|e| format!("not an EC private key: {e}"))?;
    let inner_curve = sec1.parameters.and_then(|p| p.named_curve()).map(|oid| Curve::from_oid(oid.as_bytes()));
    let curve = match (outer.map(|(c, _)| c), inner_curve) {
        (Some(c), None) | (Some(c), Some(Some(_))) | (None, Some(Some(c))) => c,
        (_, Some(None)) => return Err("EC key on a curve other than P-256 or P-384".into()),
        (None, None) => return Err("EC key without curve parameters".into()),
    };
    if sec1.private_key.len() != curve.field_len() {
        return Err(format!(
            "EC private key of {} bytes for a {}-byte curve",
            sec1.private_key.len(),
            curve.field_len()
        ));
    }
    let public = outer.and_then(|(_, p)| p).or(sec1.public_key).map(<[u8]>::to_vec);
    let kind = KeyKind::Ec(curve);
    if curve == Curve::P256 {
        let key = p256::ecdsa::SigningKey::from_slice(sec1.private_key).map_err(|e| format!("P-256 key: {e}"))?;
        let derived = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        if public.as_ref().is_some_and(|p| *p != derived) {
            return Err("the public key stored with the P-256 private key does not match it".into());
        }
        if backend == P256Backend::P256 {
            return Ok((Key::P256(key), kind));
        }
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &rs::ECDSA_P256_SHA256_ASN1_SIGNING,
            sec1.private_key,
            &derived,
            rng,
        )
        .map_err(|e| format!("P-256 key: {e}"))?;
        return Ok((Key::RingEcdsa(pair), kind));
    }
    let public =
        public.ok_or("P-384 private key without its public key: convert it with `openssl pkcs8 -topk8 -nocrypt`")?;
    let pair = EcdsaKeyPair::from_private_key_and_public_key(
        &rs::ECDSA_P384_SHA384_ASN1_SIGNING,
        sec1.private_key,
        &public,
        rng,
    )
    .map_err(|e| format!("P-384 key: {e}"))?;
    Ok((Key::RingEcdsa(pair), kind))
}

fn sign_with(key: &Key, rng: &SystemRandom, message: &[u8]) -> Result<Vec<u8>, SignerError> {
    match key {
        Key::P256(key) => {
            use p256::ecdsa::signature::Signer as _;
            let signature: p256::ecdsa::Signature = key.sign(message);
            Ok(signature.to_der().as_bytes().to_vec())
        }
        Key::RingEcdsa(pair) => {
            pair.sign(rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| SignerError::Sign("ECDSA failed".into()))
        }
        Key::RingRsa(pair) => {
            let mut signature = vec![0; pair.public().modulus_len()];
            pair.sign(&rs::RSA_PKCS1_SHA256, rng, message, &mut signature)
                .map_err(|_| SignerError::Sign("RSA signing failed".into()))?;
            Ok(signature)
        }
    }
}

impl Signer for SoftwareSigner {
    fn algorithm_der(&self) -> &[u8] {
        self.kind.algorithm_der()
    }

    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign<'a>(&'a self, tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        if let Key::RingRsa(_) = *self.key {
            let key = self.key.clone();
            let rng = self.rng.clone();
            let message = tbs.as_bytes().to_vec();
            return Box::pin(async move {
                tokio::task::spawn_blocking(move || sign_with(&key, &rng, &message))
                    .await
                    .map_err(|e| SignerError::Sign(format!("signing task failed: {e}")))?
            });
        }
        Box::pin(std::future::ready(sign_with(&self.key, &self.rng, tbs.as_bytes())))
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A throwaway P-256 key, for tests about the key file rather than the key.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKzLPkGlEeXigWNcn
sVzx3UgXBha1htyuACnOxKO5TdihRANCAAQEPacyfohUKTWzDAZ/WwYoSroiwbka
4tYt6guuZZfy/JwaCuf+UpO4mWsBTef5oOVaxq8qbzjZvywDHz8GJ4pk
-----END PRIVATE KEY-----
";

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        std::fs::write(&path, TEST_KEY).unwrap();
        let path_text = path.to_str().unwrap();
        for (mode, refused) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match SoftwareSigner::from_pem_file(path_text) {
                Ok(_) => assert!(!refused, "mode {mode:o} was accepted"),
                Err(e) => {
                    assert!(refused, "mode {mode:o}: {e}");
                    let text = e.to_string();
                    assert!(text.contains(path_text) && text.contains(&format!("mode {mode:04o}")), "{text}");
                    assert!(!text.contains("MIGHAgEA"), "the key never appears in the message: {text}");
                }
            }
        }
    }

    /// Every key form openssl writes loads, its SPKI is the one openssl derives, and openssl
    /// verifies what it signs with the algorithm the signer announces.
    #[test]
    fn openssl_keys_sign_verifiably() {
        if crate::test_env::skip_unless(&[crate::test_env::Need::Openssl]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        type Case<'a> = (&'a str, &'a [&'a str], Option<&'a [&'a str]>, KeyKind);
        let cases: &[Case] = &[
            ("p256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None, KeyKind::Ec(Curve::P256)),
            ("p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], None, KeyKind::Ec(Curve::P384)),
            (
                "p384sec1",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                Some(&["ec", "-in", "p384sec1.pem", "-out", "p384sec1.pem"]),
                KeyKind::Ec(Curve::P384),
            ),
            (
                "p256sec1",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                Some(&["ec", "-in", "p256sec1.pem", "-out", "p256sec1.pem"]),
                KeyKind::Ec(Curve::P256),
            ),
            ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], None, KeyKind::Rsa { bits: 2048 }),
            (
                "rsa1",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                Some(&["rsa", "-traditional", "-in", "rsa1.pem", "-out", "rsa1.pem"]),
                KeyKind::Rsa { bits: 2048 },
            ),
        ];
        let tbs = crate::ocsp::response::tests::one_answer(crate::ocsp::response::CertStatusAnswer::Good);
        std::fs::write(d.join("msg"), tbs.as_bytes()).unwrap();
        for (name, genargs, convert, kind) in cases {
            let file = format!("{name}.pem");
            let mut args = vec!["genpkey", "-out", &file];
            args.extend_from_slice(genargs);
            openssl(d, &args);
            if let Some(convert) = convert {
                openssl(d, convert);
            }
            openssl(d, &["pkey", "-in", &file, "-pubout", "-outform", "DER", "-out", &format!("{name}.spki")]);
            let spki = std::fs::read(d.join(format!("{name}.spki"))).unwrap();
            for backend in [P256Backend::Ring, P256Backend::P256] {
                let path = d.join(&file);
                let signer = SoftwareSigner::from_pem_file_with(path.to_str().unwrap(), backend).unwrap();
                assert_eq!(signer.kind(), *kind, "{name}");
                assert_eq!(signer.public_key_spki_der(), spki.as_slice(), "{name}");
                assert_eq!(signer.algorithm_der(), kind.algorithm_der());
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let rt = &rt;
                let signature = rt.block_on(signer.sign(&tbs)).unwrap();
                std::fs::write(d.join("sig"), &signature).unwrap();
                let digest = if *kind == KeyKind::Ec(Curve::P384) { "-sha384" } else { "-sha256" };
                openssl(
                    d,
                    &[
                        "dgst",
                        digest,
                        "-verify",
                        &format!("{name}.spki"),
                        "-keyform",
                        "DER",
                        "-signature",
                        "sig",
                        "msg",
                    ],
                );
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        if crate::test_env::skip_unless(&[crate::test_env::Need::Openssl]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(d, &["genpkey", "-algorithm", "ED25519", "-out", "ed.pem"]);
        openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521", "-out", "p521.pem"]);
        for (file, expected) in [("ed.pem", "unsupported key algorithm"), ("p521.pem", "other than P-256")] {
            let path = d.join(file);
            let err = SoftwareSigner::from_pem_file_with(path.to_str().unwrap(), P256Backend::Ring).err().unwrap();
            assert!(err.to_string().contains(expected), "{file}: {err}");
        }
        let err = SoftwareSigner::from_pem(b"hello", P256Backend::Ring, "file:x").err().unwrap();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    }
}
