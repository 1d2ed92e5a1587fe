//! Signers: whatever holds an issuer's (or delegated responder's) private key.
//!
//! The pipeline only ever hands a signer the exact DER bytes of a ResponseData and gets back
//! the signature value; it never re-encodes what was signed. A signer is named by a string:
//! `file:PATH` for a software key, or an RFC 7512 `pkcs11:` URI for a key in an HSM.

pub mod software;

use std::sync::Arc;

use futures_util::future::BoxFuture;

/// Why a signer could not be opened or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("signer {spec:?}: {reason}")]
    Open { spec: String, reason: String },
    #[error("unsupported signer {0:?}: expected file:PATH or a pkcs11: URI")]
    UnsupportedScheme(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Makes signatures with one private key.
///
/// `dyn`-compatible: issuers are configured at run time, each with its own kind of signer.
/// Signing is on the miss path only, where one boxed future per signature is noise.
pub trait Signer: Send + Sync {
    /// DER of the AlgorithmIdentifier that goes into `BasicOCSPResponse.signatureAlgorithm`.
    fn algorithm_der(&self) -> &[u8];
    /// DER SubjectPublicKeyInfo of the key, to check it against the certificate it signs for.
    fn public_key_spki_der(&self) -> &[u8];
    /// Signs `message` (DER ResponseData); returns the BIT STRING contents of the signature.
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignerError>>;
    /// A short human description for logs and metrics (never key material).
    fn describe(&self) -> &str;
    /// Whether the signer can sign now, for `/readyz`.
    fn check(&self) -> Result<(), SignerError> {
        Ok(())
    }
}

/// Stands in for a signer that could not be opened, so that the other issuers are still
/// served and this one's cached responses too: its misses get tryLater, and `/readyz` names
/// it, until the responder is restarted with the key in place.
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

    fn sign<'a>(&'a self, _message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        Box::pin(std::future::ready(Err(self.check().err().unwrap_or(SignerError::Sign(self.reason.clone())))))
    }

    fn describe(&self) -> &str {
        &self.spec
    }

    fn check(&self) -> Result<(), SignerError> {
        Err(SignerError::Sign(format!("signer unavailable: {}", self.reason)))
    }
}

/// Opens the signer named by `spec`.
pub fn open(spec: &str) -> Result<Arc<dyn Signer>, SignerError> {
    if let Some(path) = spec.strip_prefix("file:") {
        Ok(Arc::new(software::SoftwareSigner::from_pem_file(path)?))
    } else if spec.starts_with("pkcs11:") {
        Err(SignerError::Open {
            spec: spec.to_owned(),
            reason: "PKCS#11 signing is not available in this build yet".into(),
        })
    } else {
        Err(SignerError::UnsupportedScheme(spec.to_owned()))
    }
}
