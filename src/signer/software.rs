//! Software signer: an ECDSA P-256 key read from a PEM file (PKCS#8 or SEC1).
//!
//! p256 is constant-time and pure Rust. Signing takes tens of microseconds, so it runs inline
//! on the calling worker rather than hopping to a blocking thread; the pipeline's signing
//! limiter bounds how many run at once.

use futures_util::future::BoxFuture;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};

use super::{Signer, SignerError};

/// AlgorithmIdentifier { ecdsa-with-SHA256 } with absent parameters (RFC 5758 section 3.2).
const ECDSA_WITH_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// An ECDSA P-256 key held in process memory.
pub struct SoftwareSigner {
    key: SigningKey,
    spki_der: Vec<u8>,
    description: String,
}

impl SoftwareSigner {
    /// Reads a PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM file.
    pub fn from_pem_file(path: &str) -> Result<Self, SignerError> {
        let open_error = |reason: String| SignerError::Open { spec: format!("file:{path}"), reason };
        let pem = std::fs::read_to_string(path).map_err(|e| open_error(format!("cannot read key file: {e}")))?;
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            p256::SecretKey::from_sec1_pem(&pem)
                .map(SigningKey::from)
                .map_err(|e| open_error(format!("not a P-256 SEC1 private key: {e}")))?
        } else {
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| open_error(format!("not a P-256 PKCS#8 private key: {e}")))?
        };
        Self::from_key(key, format!("file:{path}"))
    }

    fn from_key(key: SigningKey, description: String) -> Result<Self, SignerError> {
        let spki_der = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| SignerError::Open { spec: description.clone(), reason: e.to_string() })?
            .into_vec();
        Ok(SoftwareSigner { key, spki_der, description: format!("p256 {description}") })
    }
}

impl Signer for SoftwareSigner {
    fn algorithm_der(&self) -> &[u8] {
        ECDSA_WITH_SHA256
    }

    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        let signature: Signature = self.key.sign(message);
        let der = signature.to_der().as_bytes().to_vec();
        Box::pin(std::future::ready(Ok(der)))
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn signs_what_it_is_given_verifiably() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let signer = SoftwareSigner::from_key(key, "test".into()).unwrap();
        let message = b"the exact DER of a ResponseData";
        let der = futures_util::FutureExt::now_or_never(signer.sign(message)).unwrap().unwrap();
        let verifying = VerifyingKey::from_public_key_der(signer.public_key_spki_der()).unwrap();
        let signature = Signature::from_der(&der).unwrap();
        verifying.verify(message, &signature).unwrap();
        assert!(verifying.verify(b"something else", &signature).is_err());
    }
}
