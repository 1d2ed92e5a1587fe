//! TLS client settings shared by the Postgres and Redis connections: which certificate
//! authorities are trusted and which client certificate (if any) is shown.
//!
//! One crypto stack: rustls with the ring provider (ring already signs responses), so no
//! aws-lc or OpenSSL is linked. Trust is the configured CA file when one is set, and the
//! operating system's store (read by `rustls-native-certs`, the store the host's
//! ca-certificates package keeps current) otherwise; a CA file *replaces* the system roots,
//! so that for a private PKI no public CA can vouch for the database's host name. The server
//! certificate and its host name are always verified: there is no switch to turn that off.
//!
//! The files are read when a connection is set up (each pool, listener reconnection or CLI
//! command), never per request: TLS costs nothing on the hot path once a connection is open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::secret_file::{self, SecretFileError};

/// The TLS files of one `[database]` or `[redis]` section; `None` = not configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the authorities trusted for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), shown when the server asks for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`: a secret, so owner-only (see [`crate::secret_file`]).
    pub key_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS client key: {0}")]
    Key(#[from] SecretFileError),
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{} is not a certificate authority rustls accepts: {detail}", path.display())]
    BadAuthority { path: PathBuf, detail: String },
    #[error("a client certificate needs its key: set both tls_cert_file and tls_key_file, or neither")]
    IncompleteClientIdentity,
    #[error("no trusted certificate authorities in the system store ({0}); set tls_ca_file")]
    NoSystemRoots(String),
    #[error("the TLS provider refuses its own default protocol versions: {0}")]
    Provider(#[source] rustls::Error),
    #[error("the client certificate {} and its key {} do not make a usable identity: {source}", cert.display(), key.display())]
    ClientIdentity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A client certificate chain and its key, read from their files.
pub struct ClientIdentity {
    /// The PEM file as read, for drivers that take PEM (redis-rs).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// The contents of a [`TlsFiles`], checked: every file read and parsed.
pub struct TlsMaterial {
    /// The CA file as read (`None`: the system roots), for drivers that take PEM.
    pub ca_pem: Option<Vec<u8>>,
    roots: Vec<CertificateDer<'static>>,
    ca_file: Option<PathBuf>,
    pub identity: Option<ClientIdentity>,
}

/// Names the files only: the key's bytes never reach a log.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("ca_file", &self.ca_file).field("identity", &self.identity).finish()
    }
}

impl TlsFiles {
    /// From configuration keys, where "" means not set.
    pub fn from_keys(ca_file: &str, cert_file: &str, key_file: &str) -> TlsFiles {
        let path = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()));
        TlsFiles { ca_file: path(ca_file), cert_file: path(cert_file), key_file: path(key_file) }
    }

    /// Whether any TLS file is configured.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Reads and parses the files. The system roots are not read here (only
    /// [`TlsMaterial::client_config`] needs them; redis-rs reads them itself).
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let (ca_pem, roots) = match &self.ca_file {
            Some(path) => {
                let pem = read_public(path)?;
                let roots = certificates(path, &pem)?;
                (Some(pem), roots)
            }
            None => (None, Vec::new()),
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => {
                let cert_pem = read_public(cert_file)?;
                let chain = certificates(cert_file, &cert_pem)?;
                let key_pem = secret_file::read(key_file)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadPem {
                    path: key_file.clone(),
                    detail: format!("no usable PEM private key ({e})"),
                })?;
                Some(ClientIdentity {
                    cert_pem,
                    key_pem,
                    chain,
                    key,
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                })
            }
            _ => return Err(TlsError::IncompleteClientIdentity),
        };
        Ok(TlsMaterial { ca_pem, roots, ca_file: self.ca_file.clone(), identity })
    }
}

impl TlsMaterial {
    /// A rustls client configuration on the ring provider: the configured CA (or the system
    /// roots), the default protocol versions, and the client identity if there is one. The
    /// verifier is rustls' WebPKI one: chain to a trusted root, validity dates, and the server
    /// name (DNS name or IP address) the connection was made to.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut store = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in &self.roots {
                    store
                        .add(cert.clone())
                        .map_err(|e| TlsError::BadAuthority { path: path.clone(), detail: e.to_string() })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
                    return Err(TlsError::NoSystemRoots(why));
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)?
            .with_root_certificates(store);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key()).map_err(|source| {
                TlsError::ClientIdentity { cert: id.cert_file.clone(), key: id.key_file.clone(), source }
            }),
        }
    }
}

/// A configuration that trusts no server, for a connector a driver will not use (Postgres
/// with `sslmode=disable`): should it ever be used, it fails closed.
pub fn trust_nothing() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// The ring provider. Also installed as the process default, which redis-rs's
/// `ClientConfig::builder()` uses: done once, before any Redis TLS client is built, so the
/// choice never depends on which rustls features other crates happen to enable.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Err: a default was installed already (by a test harness, say); keep it.
            let _ = rustls::crypto::CryptoProvider::install_default(provider.as_ref().clone());
            provider
        })
        .clone()
}

/// Certificates are public: read without the owner-only rule of secret files.
fn read_public(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem { path: path.to_path_buf(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn nothing_configured_is_empty_and_loads() {
        let files = TlsFiles::default();
        assert!(files.is_empty());
        let material = files.load().unwrap();
        assert!(material.ca_pem.is_none() && material.identity.is_none());
    }

    #[test]
    fn a_cert_without_its_key_is_refused() {
        let files = TlsFiles { cert_file: Some("/x/client.pem".into()), ..TlsFiles::default() };
        assert!(matches!(files.load(), Err(TlsError::IncompleteClientIdentity)));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let error = TlsFiles { ca_file: Some(not_pem.clone()), ..TlsFiles::default() }.load().unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(error.to_string().contains(&not_pem.display().to_string()), "{error}");

        let missing = dir.path().join("missing.pem");
        let error = TlsFiles { ca_file: Some(missing.clone()), ..TlsFiles::default() }.load().unwrap_err();
        assert!(error.to_string().contains(&missing.display().to_string()), "{error}");
    }

    #[test]
    fn a_client_key_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        // Any parseable PEM certificate block will do: the key is refused before use.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = TlsFiles { cert_file: Some(cert), key_file: Some(key.clone()), ..TlsFiles::default() };
        let error = files.load().unwrap_err();
        assert!(matches!(error, TlsError::Key(SecretFileError::TooOpen { .. })), "{error}");
        assert!(error.to_string().contains("0644"), "{error}");
    }
}
