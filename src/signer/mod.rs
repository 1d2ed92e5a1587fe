//! Signers: whatever holds an issuer's (or delegated responder's) private key.
//!
//! The pipeline only ever hands a signer the exact DER bytes of a ResponseData and gets back
//! the signature value; it never re-encodes what was signed. A signer is named by a string:
//! `file:PATH` for a software key, or an RFC 7512 `pkcs11:` URI for a key in an HSM.
//!
//! Keys: ECDSA P-256 (ecdsa-with-SHA256), ECDSA P-384 (ecdsa-with-SHA384) and RSA of at least
//! 2048 bits (sha256WithRSAEncryption, PKCS#1 v1.5). See `docs/signers.md`.

pub mod algorithm;
pub mod limiter;
pub mod pkcs11;
pub mod software;
pub mod uri;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::ocsp::response::TbsResponseData;

/// Why a signer could not be opened or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("signer {spec:?}: {reason}")]
    Open { spec: String, reason: String },
    /// The signer's name itself is wrong (a malformed `pkcs11:` URI): the operator's input.
    #[error("signer {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("unsupported signer {0:?}: expected file:PATH or a pkcs11: URI")]
    UnsupportedScheme(String),
    #[error("signing failed: {0}")]
    Sign(String),
    /// The signer's key is not the key of the certificate it would sign for: responses
    /// signed with it would not verify.
    #[error("signer {spec:?}: its public key is not the key of the signing certificate")]
    KeyMismatch { spec: String },
}

/// Makes signatures with one private key.
///
/// `dyn`-compatible: issuers are configured at run time, each with its own kind of signer.
/// Signing is on the miss path only, where one boxed future per signature is noise.
pub trait Signer: Send + Sync {
    /// DER of the AlgorithmIdentifier that goes into `BasicOCSPResponse.signatureAlgorithm`.
    fn algorithm_der(&self) -> &[u8];
    /// DER SubjectPublicKeyInfo of the key it signs with: the one it was opened for.
    fn public_key_spki_der(&self) -> &[u8];
    /// Signs the DER ResponseData; returns the BIT STRING contents of the signature. Nothing
    /// but an encoded ResponseData can be handed to a signer.
    fn sign<'a>(&'a self, tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>>;
    /// A short human description for logs and metrics (never key material).
    fn describe(&self) -> &str;
    /// Whether the signer can sign now, for `/readyz`.
    fn check(&self) -> Result<(), SignerError> {
        Ok(())
    }
}

/// Which implementation signs with software P-256 keys (`signing.p256_backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum P256Backend {
    /// ring: assembly-backed, constant-time (BoringSSL's P-256).
    #[default]
    Ring,
    /// RustCrypto `p256`: pure Rust, constant-time.
    P256,
}

/// How signers are opened: the `[signing]` settings that concern them.
#[derive(Clone, Debug)]
pub struct SignerOptions {
    /// Sessions (and threads) per PKCS#11 key.
    pub pkcs11_sessions: usize,
    /// How often a PKCS#11 signer that is down retries, and an idle one probes its token.
    pub pkcs11_retry: Duration,
    pub p256_backend: P256Backend,
}

/// Stands in for a signer that could not be opened, so that the other issuers are still
/// served and this one's cached responses too: its misses get tryLater, and `/readyz` names
/// it, until the responder is restarted with the key in place. It holds no key, so it never
/// signs for the wrong one.
pub struct UnavailableSigner {
    spec: String,
    reason: String,
}

impl UnavailableSigner {
    pub fn new(spec: &str, error: &SignerError) -> Self {
        UnavailableSigner { spec: spec.to_owned(), reason: error.to_string() }
    }
}

impl Signer for UnavailableSigner {
    fn algorithm_der(&self) -> &[u8] {
        &[]
    }

    fn public_key_spki_der(&self) -> &[u8] {
        &[]
    }

    fn sign<'a>(&'a self, _tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        Box::pin(std::future::ready(Err(self.check().err().unwrap_or(SignerError::Sign(self.reason.clone())))))
    }

    fn describe(&self) -> &str {
        &self.spec
    }

    fn check(&self) -> Result<(), SignerError> {
        Err(SignerError::Sign(format!("signer unavailable: {}", self.reason)))
    }
}

/// Opens the signer named by `spec` for the key `expected_spki` (the DER SubjectPublicKeyInfo
/// of the certificate it signs for: the issuer's, or the delegated responder's), requiring
/// that it can sign now (the admin CLI, before it registers an issuer). A signer holding
/// another key is refused with [`SignerError::KeyMismatch`].
pub fn open(spec: &str, expected_spki: &[u8], options: &SignerOptions) -> Result<Arc<dyn Signer>, SignerError> {
    open_inner(spec, expected_spki, options, true)
}

/// Opens a signer for serving, for the key `expected_spki`: a PKCS#11 signer whose token
/// cannot be reached starts down, recovers by itself, and signs only once it finds that key.
/// The caller decides what an error means; [`crate::issuers`] serves the other issuers and
/// puts an [`UnavailableSigner`] in place of one that cannot be opened.
pub fn open_for_serving(
    spec: &str,
    expected_spki: &[u8],
    options: &SignerOptions,
) -> Result<Arc<dyn Signer>, SignerError> {
    open_inner(spec, expected_spki, options, false)
}

fn open_inner(
    spec: &str,
    expected_spki: &[u8],
    options: &SignerOptions,
    strict: bool,
) -> Result<Arc<dyn Signer>, SignerError> {
    let signer: Arc<dyn Signer> = if let Some(path) = spec.strip_prefix("file:") {
        Arc::new(software::SoftwareSigner::from_pem_file_with(path, options.p256_backend)?)
    } else if spec.starts_with("pkcs11:") {
        Arc::new(pkcs11::Pkcs11Signer::open(spec, expected_spki, options, strict)?)
    } else {
        return Err(SignerError::UnsupportedScheme(spec.to_owned()));
    };
    holding(spec, signer, expected_spki)
}

/// The signer named `spec`, if its key is `expected_spki`: the check [`open`] makes, for a
/// signer opened some other way too (a test's wrapper).
pub fn holding(spec: &str, signer: Arc<dyn Signer>, expected_spki: &[u8]) -> Result<Arc<dyn Signer>, SignerError> {
    if signer.public_key_spki_der() != expected_spki {
        return Err(SignerError::KeyMismatch { spec: spec.to_owned() });
    }
    Ok(signer)
}
