//! Issuer certificates: reading them from disk and computing their OCSP CertID hashes.
//!
//! RFC 6960 4.1.1: a CertID names a certificate by its issuer, as
//! `issuerNameHash` = hash of the DER encoding of the issuer certificate's *subject* Name, and
//! `issuerKeyHash` = hash of the value of the issuer's `subjectPublicKey` BIT STRING (the key
//! bits alone: no tag, no length, no unused-bits octet). jitocsp precomputes both, with SHA-1
//! and SHA-256, when an issuer is added (`issuers.name_hash_*`, `issuers.key_hash_*`), so a
//! request is matched to its issuer without hashing anything at request time.

use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The four CertID hashes of one issuer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdHashes {
    pub name_sha1: [u8; 20],
    pub key_sha1: [u8; 20],
    pub name_sha256: [u8; 32],
    pub key_sha256: [u8; 32],
}

/// A certificate could not be read or is not a certificate. Always the operator's input.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// (The I/O error is part of the message, not a `source`, so it is printed once.)
    #[error("cannot read {path}: {error}", path = .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: malformed PEM: {reason}", path = .path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: contains no certificate (expected PEM CERTIFICATE blocks or one DER certificate)", path = .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    NotACertificate { what: String, reason: String },
}

/// Parses one DER certificate, requiring that nothing follows it.
pub fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CertificateError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(CertificateError::NotACertificate {
            what: what.to_owned(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        }),
        Err(e) => Err(CertificateError::NotACertificate { what: what.to_owned(), reason: e.to_string() }),
    }
}

/// Computes the CertID hashes (RFC 6960 4.1.1) of the issuer certificate `cert_der`.
pub fn certid_hashes(cert_der: &[u8]) -> Result<CertIdHashes, CertificateError> {
    let cert = parse_cert(cert_der, "issuer certificate")?;
    Ok(certid_hashes_of(&cert))
}

/// As [`certid_hashes`], for an already parsed certificate.
pub fn certid_hashes_of(cert: &X509Certificate<'_>) -> CertIdHashes {
    let name = cert.tbs_certificate.subject.as_raw();
    // `data` is the BIT STRING contents after the unused-bits octet: exactly the key bits.
    let key: &[u8] = &cert.tbs_certificate.subject_pki.subject_public_key.data;
    CertIdHashes {
        name_sha1: Sha1::digest(name).into(),
        key_sha1: Sha1::digest(key).into(),
        name_sha256: Sha256::digest(name).into(),
        key_sha256: Sha256::digest(key).into(),
    }
}

/// Reads every certificate in `path`: PEM (any number of `CERTIFICATE` blocks; other blocks
/// such as keys are ignored) or a single DER certificate. Each returned DER is checked to
/// parse as an X.509 certificate; an error names the file and, for PEM, the block number.
pub fn load_pem_or_der(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>, CertificateError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|error| CertificateError::Read { path: path.to_owned(), error })?;
    certs_from_bytes(&bytes, path)
}

/// As [`load_pem_or_der`], for bytes already read; `path` only names them in errors.
pub fn certs_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>, CertificateError> {
    let looks_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !looks_pem {
        if bytes.is_empty() {
            return Err(CertificateError::NoCertificate { path: path.to_owned() });
        }
        parse_cert(bytes, &path.display().to_string())?;
        return Ok(vec![bytes.to_vec()]);
    }
    let blocks =
        pem::parse_many(bytes).map_err(|e| CertificateError::Pem { path: path.to_owned(), reason: e.to_string() })?;
    let mut certs = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        if block.tag() != "CERTIFICATE" {
            continue;
        }
        let what = format!("{} (PEM block {})", path.display(), i + 1);
        parse_cert(block.contents(), &what)?;
        certs.push(block.contents().to_vec());
    }
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// Checks that `cert`'s signature was made by `issuer`'s key.
///
/// Returns `Ok(true)` when verified, `Ok(false)` when this build cannot verify the
/// combination (only ECDSA P-256 with SHA-256 is verified here; anything else is
/// checked by issuer name only), and `Err` with a reason when the signature is wrong.
pub fn verify_issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<bool, String> {
    use p256::ecdsa::signature::Verifier;
    const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    const PRIME256V1: &str = "1.2.840.10045.3.1.7";

    if cert.signature_algorithm.algorithm.to_id_string() != ECDSA_WITH_SHA256 {
        return Ok(false);
    }
    let spki = &issuer.tbs_certificate.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != EC_PUBLIC_KEY || curve.as_deref() != Some(PRIME256V1) {
        return Ok(false);
    }
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&spki.subject_public_key.data)
        .map_err(|e| format!("issuer public key unusable: {e}"))?;
    let signature = p256::ecdsa::Signature::from_der(&cert.signature_value.data)
        .map_err(|e| format!("malformed ECDSA signature: {e}"))?;
    key.verify(cert.tbs_certificate.as_ref(), &signature)
        .map_err(|_| "signature does not verify with the issuer's key".to_owned())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Reads the single CertID of a DER OCSPRequest made by `openssl ocsp -reqout`:
    /// returns (hash algorithm OID DER, issuerNameHash, issuerKeyHash).
    fn certid_from_request(der: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use x509_parser::der_parser::ber::BerObjectContent;
        use x509_parser::der_parser::parse_der;
        let (_, req) = parse_der(der).unwrap();
        // OCSPRequest { tbsRequest { requestList { Request { reqCert CertID } } } }
        let tbs = &req.as_sequence().unwrap()[0];
        let list =
            tbs.as_sequence().unwrap().iter().find(|o| matches!(o.content, BerObjectContent::Sequence(_))).unwrap();
        let request = &list.as_sequence().unwrap()[0];
        let certid = &request.as_sequence().unwrap()[0];
        let parts = certid.as_sequence().unwrap();
        let alg = parts[0].as_sequence().unwrap()[0].as_oid().unwrap().to_id_string();
        (alg.into_bytes(), parts[1].as_slice().unwrap().to_vec(), parts[2].as_slice().unwrap().to_vec())
    }

    fn make_chain(dir: &Path, ca_key: &[&str]) {
        let mut genkey = vec!["genpkey", "-out", "ca.key"];
        genkey.extend_from_slice(ca_key);
        openssl(dir, &genkey);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/C=XX/O=jitocsp test/CN=Test CA \u{e9}",
                "-days",
                "30",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
        );
        openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "leaf.key"]);
        openssl(dir, &["req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr"]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "0x00f1e2d3c4",
                "-days",
                "10",
                "-out",
                "leaf.pem",
            ],
        );
    }

    fn check_against_openssl(ca_key: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_chain(d, ca_key);
        let ca = load_pem_or_der(d.join("ca.pem")).unwrap();
        assert_eq!(ca.len(), 1);
        let hashes = certid_hashes(&ca[0]).unwrap();

        for (digest, oid) in [("-sha1", "1.3.14.3.2.26"), ("-sha256", "2.16.840.1.101.3.4.2.1")] {
            openssl(d, &["ocsp", "-issuer", "ca.pem", digest, "-cert", "leaf.pem", "-no_nonce", "-reqout", "req.der"]);
            let req = std::fs::read(d.join("req.der")).unwrap();
            let (alg, name, key) = certid_from_request(&req);
            assert_eq!(String::from_utf8(alg).unwrap(), oid);
            if digest == "-sha1" {
                assert_eq!(name, hashes.name_sha1);
                assert_eq!(key, hashes.key_sha1);
            } else {
                assert_eq!(name, hashes.name_sha256);
                assert_eq!(key, hashes.key_sha256);
            }
        }

        // The leaf was signed by the CA: verification succeeds (EC) or is not attempted (RSA).
        let leaf = load_pem_or_der(d.join("leaf.pem")).unwrap();
        let leaf = parse_cert(&leaf[0], "leaf").unwrap();
        let ca = parse_cert(&ca[0], "ca").unwrap();
        let verified = verify_issued_by(&leaf, &ca).unwrap();
        assert_eq!(verified, ca_key.contains(&"ec_paramgen_curve:P-256"));
        // A certificate is not issued by a stranger.
        if verified {
            let (leaf_cert, leaf_as_issuer) = (&leaf, &leaf);
            assert!(verify_issued_by(leaf_cert, leaf_as_issuer).is_err());
        }
    }

    #[test]
    fn hashes_match_openssl_ocsp_request_ec() {
        if crate::test_env::skip_unless(&[crate::test_env::Need::Openssl]) {
            return;
        }
        check_against_openssl(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    }

    #[test]
    fn hashes_match_openssl_ocsp_request_rsa() {
        if crate::test_env::skip_unless(&[crate::test_env::Need::Openssl]) {
            return;
        }
        check_against_openssl(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    }

    #[test]
    fn der_and_multi_pem_files_load() {
        if crate::test_env::skip_unless(&[crate::test_env::Need::Openssl]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_chain(d, &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        openssl(d, &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"]);
        let der = load_pem_or_der(d.join("ca.der")).unwrap();
        let pem = load_pem_or_der(d.join("ca.pem")).unwrap();
        assert_eq!(der, pem);

        let mut both = std::fs::read(d.join("ca.pem")).unwrap();
        both.extend(std::fs::read(d.join("leaf.key")).unwrap());
        both.extend(std::fs::read(d.join("leaf.pem")).unwrap());
        std::fs::write(d.join("both.pem"), both).unwrap();
        assert_eq!(load_pem_or_der(d.join("both.pem")).unwrap().len(), 2);

        let err = load_pem_or_der(d.join("leaf.key")).unwrap_err();
        assert!(err.to_string().contains("leaf.key"), "{err}");
        assert!(matches!(err, CertificateError::NoCertificate { .. }));
        let err = load_pem_or_der(d.join("leaf.csr")).unwrap_err();
        assert!(matches!(err, CertificateError::NoCertificate { .. }), "{err}");
        let err = load_pem_or_der(d.join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::write(d.join("junk.der"), b"\x30\x03\x02\x01\x01").unwrap();
        let err = load_pem_or_der(d.join("junk.der")).unwrap_err();
        assert!(matches!(err, CertificateError::NotACertificate { .. }), "{err}");
        assert!(err.to_string().contains("junk.der"), "{err}");
    }
}
