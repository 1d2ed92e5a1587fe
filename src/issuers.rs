//! The issuers a running responder answers for, loaded from Postgres with their signers, and
//! kept current while it runs.
//!
//! Matching a request to an issuer compares the CertID's precomputed name and key hashes, so
//! nothing is hashed per request. A CertID that matches no issuer is answered unauthorized
//! and never reaches a signer (spec invariant 2).
//!
//! Issuers change while responders run (`admin issuer add`, `retire`, `set-signer`). Every
//! change to the `issuers` table notifies [`CHANNEL`] (a trigger, sql/0005); the change feed's
//! listener hears it, and also asks for a reload whenever its connection is (re)established,
//! since notifications sent while it was down are lost. [`LiveIssuers`] then reloads the rows
//! in the background: issuers whose row did not change are kept as they are (their signers
//! stay open), changed and new ones are opened, retired ones are dropped, and the new set
//! replaces the old in one atomic swap. Requests read the current set without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::db::issuers::{self as rows, Served};
use crate::metrics::SigningMetrics;
use crate::ocsp::request::RequestedCert;
use crate::ocsp::HashAlgorithm;
use crate::signer::{self, Signer, SignerError, SignerOptions, UnavailableSigner};
use crate::tls::TlsFiles;
use crate::x509::{certid_hashes_of, parse_cert, CertIdHashes};

/// One issuing CA, ready to answer for.
///
/// Its signer holds the key of its signing certificate (the CA's, or the delegated
/// responder's): it was opened for that key, or checked against it, or it is an
/// [`UnavailableSigner`] that holds no key and never signs. Hence the private fields: an
/// issuer is only made by [`Issuer::open`] or [`Issuer::with_signer`].
pub struct Issuer {
    pub id: i32,
    pub name: String,
    pub hashes: CertIdHashes,
    /// ResponderID byKey: SHA-1 of the signing certificate's public key.
    responder_key_hash: [u8; 20],
    signer: Arc<dyn Signer>,
    /// Certificates included in every response: the delegated responder certificate, if any.
    included_certs: Vec<Bytes>,
    /// Registered once: a miss would otherwise look its labels up per signature.
    signing_metrics: SigningMetrics,
    /// When its row last changed (`issuers.changed_at`): a reload keeps this issuer while the
    /// row's time is the same. None for issuers not loaded from a row (tests).
    changed_at: Option<DateTime<Utc>>,
}

/// Why the issuers could not be loaded. Fatal at start-up: serving without a configured
/// issuer's key would answer its certificates with errors.
#[derive(Debug, thiserror::Error)]
pub enum IssuerLoadError {
    #[error("reading issuers: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading issuers: {0}")]
    Connect(#[from] crate::db::ConnectError),
    #[error("issuer {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

impl Issuer {
    /// Builds an issuer from its stored certificate(s) and opens its signer (`spec`) for the
    /// key of the signing certificate. A signer holding another key is an error; one that
    /// cannot be opened is replaced by an [`UnavailableSigner`], so that the other issuers
    /// are still served.
    pub fn open(
        id: i32,
        name: String,
        cert_der: &[u8],
        responder_cert_der: Option<&[u8]>,
        spec: &str,
        options: &SignerOptions,
    ) -> Result<Self, IssuerLoadError> {
        Self::build(id, name, cert_der, responder_cert_der, |spki| {
            match signer::open_for_serving(spec, spki, options) {
                Err(error) if !matches!(error, SignerError::KeyMismatch { .. }) => {
                    Ok(Arc::new(UnavailableSigner::new(spec, &error)))
                }
                opened => opened,
            }
        })
    }

    /// As [`Issuer::open`], with a signer opened already (a test's wrapper): refused unless
    /// it holds the key of the signing certificate.
    pub fn with_signer(
        id: i32,
        name: String,
        cert_der: &[u8],
        responder_cert_der: Option<&[u8]>,
        signer: Arc<dyn Signer>,
    ) -> Result<Self, IssuerLoadError> {
        let spec = signer.describe().to_owned();
        Self::build(id, name, cert_der, responder_cert_der, |spki| signer::holding(&spec, signer, spki))
    }

    /// Parses the certificates and gets the signer from `open`, given the signing
    /// certificate's SubjectPublicKeyInfo.
    fn build(
        id: i32,
        name: String,
        cert_der: &[u8],
        responder_cert_der: Option<&[u8]>,
        open: impl FnOnce(&[u8]) -> Result<Arc<dyn Signer>, SignerError>,
    ) -> Result<Self, IssuerLoadError> {
        let invalid = |reason: String| IssuerLoadError::Invalid { name: name.clone(), reason };
        let cert = parse_cert(cert_der, "issuer certificate").map_err(|e| invalid(e.to_string()))?;
        let hashes = certid_hashes_of(&cert);
        let signing_cert = match responder_cert_der {
            Some(der) => parse_cert(der, "responder certificate").map_err(|e| invalid(e.to_string()))?,
            None => cert,
        };
        let signer = open(signing_cert.tbs_certificate.subject_pki.raw).map_err(|error| match error {
            SignerError::KeyMismatch { spec } => invalid(format!(
                "the key of signer {spec} is not the key of the {} certificate",
                if responder_cert_der.is_some() { "responder" } else { "issuer" }
            )),
            other => invalid(other.to_string()),
        })?;
        let responder_key_hash = certid_hashes_of(&signing_cert).key_sha1;
        Ok(Issuer {
            id,
            signing_metrics: SigningMetrics::register(&name, signer.describe()),
            name: name.clone(),
            hashes,
            responder_key_hash,
            signer,
            included_certs: responder_cert_der.map(Bytes::copy_from_slice).into_iter().collect(),
            changed_at: None,
        })
    }

    /// Opens the issuer a row describes (blocking: a PKCS#11 signer logs in to its token).
    fn from_row(row: Served, options: &SignerOptions) -> Result<Self, IssuerLoadError> {
        let issuer =
            Issuer::open(row.id, row.name, &row.cert_der, row.responder_cert_der.as_deref(), &row.signer, options)?;
        if let Err(error) = issuer.signer.check() {
            tracing::error!(issuer = %issuer.name, %error, "signer unavailable: this issuer's misses will get tryLater");
        }
        Ok(Issuer { changed_at: Some(row.changed_at), ..issuer })
    }

    pub fn signer(&self) -> &dyn Signer {
        self.signer.as_ref()
    }

    pub fn signing_metrics(&self) -> &SigningMetrics {
        &self.signing_metrics
    }

    pub fn responder_key_hash(&self) -> &[u8; 20] {
        &self.responder_key_hash
    }

    pub fn included_certs(&self) -> &[Bytes] {
        &self.included_certs
    }

    fn matches(&self, cert: &RequestedCert) -> bool {
        let (name, key): (&[u8], &[u8]) = match cert.hash {
            HashAlgorithm::Sha1 => (&self.hashes.name_sha1, &self.hashes.key_sha1),
            HashAlgorithm::Sha256 => (&self.hashes.name_sha256, &self.hashes.key_sha256),
        };
        cert.issuer_key_hash() == key && cert.issuer_name_hash() == name
    }
}

/// Index pairs (issuer, the earlier issuer it cannot be told apart from): same CertID name
/// and key hashes. `admin issuer add` refuses such a pair, but databases from before it did
/// may hold one; [`IssuerSet::find`] then always picks the earlier one (lower id).
fn shadowed(hashes: &[&CertIdHashes]) -> Vec<(usize, usize)> {
    let same = |a: &CertIdHashes, b: &CertIdHashes| {
        (a.name_sha1 == b.name_sha1 && a.key_sha1 == b.key_sha1)
            || (a.name_sha256 == b.name_sha256 && a.key_sha256 == b.key_sha256)
    };
    (0..hashes.len())
        .filter_map(|i| (0..i).find(|&earlier| same(hashes[earlier], hashes[i])).map(|earlier| (i, earlier)))
        .collect()
}

/// Every issuer served, searched linearly: a responder serves a handful.
#[derive(Default)]
pub struct IssuerSet {
    issuers: Vec<Arc<Issuer>>,
}

impl IssuerSet {
    pub fn new(issuers: Vec<Issuer>) -> Self {
        IssuerSet { issuers: issuers.into_iter().map(Arc::new).collect() }
    }

    /// Loads every issuer that is not retired and opens its signer. At start-up an issuer
    /// that cannot be built (a signer holding another key, an unreadable certificate) is
    /// fatal: serving without it would answer its certificates with errors.
    pub async fn load(client: &tokio_postgres::Client, options: &SignerOptions) -> Result<Self, IssuerLoadError> {
        let mut issuers = Vec::new();
        for row in rows::served(client).await? {
            let options = options.clone();
            issuers.push(Arc::new(open_blocking(row, options).await?));
        }
        Ok(IssuerSet::from_arcs(issuers))
    }

    /// The set the rows describe now, keeping the issuers of `self` whose row has not
    /// changed. An issuer that cannot be built is logged and left as it was (kept if it was
    /// served, still absent if it is new), so that one bad row never stops the others.
    async fn reload(&self, client: &tokio_postgres::Client, options: &SignerOptions) -> Result<Self, IssuerLoadError> {
        let mut issuers = Vec::new();
        for row in rows::served(client).await? {
            let current = self.issuers.iter().find(|issuer| issuer.id == row.id);
            if let Some(kept) = current.filter(|issuer| issuer.changed_at == Some(row.changed_at)) {
                issuers.push(kept.clone());
                continue;
            }
            let (id, name) = (row.id, row.name.clone());
            match open_blocking(row, options.clone()).await {
                Ok(opened) => {
                    tracing::info!(issuer = %opened.name, id, signer = opened.signer.describe(),
                        "{}", if current.is_some() { "issuer changed: reopened" } else { "issuer added: serving" });
                    issuers.push(Arc::new(opened));
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::ISSUER_RELOAD_FAILURES).increment(1);
                    tracing::error!(issuer = %name, id, %error, "issuer changed but cannot be opened; {}",
                        if current.is_some() { "still serving it as it was" } else { "not serving it" });
                    issuers.extend(current.cloned());
                }
            }
        }
        for gone in self.issuers.iter().filter(|old| !issuers.iter().any(|new| new.id == old.id)) {
            tracing::info!(issuer = %gone.name, id = gone.id, "issuer retired: no longer served");
        }
        Ok(IssuerSet::from_arcs(issuers))
    }

    fn from_arcs(issuers: Vec<Arc<Issuer>>) -> Self {
        let hashes: Vec<&CertIdHashes> = issuers.iter().map(|issuer| &issuer.hashes).collect();
        for (i, earlier) in shadowed(&hashes) {
            tracing::warn!(issuer = %issuers[i].name, answered_as = %issuers[earlier].name,
                "issuer has the subject and key (hence the CertID) of an earlier issuer: requests for \
                 its certificates match the earlier one and are answered unauthorized unless the \
                 certificates are imported there (`jitocsp admin import --issuer` with the answered_as name)");
        }
        IssuerSet { issuers }
    }

    pub fn find(&self, cert: &RequestedCert) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|issuer| issuer.matches(cert))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.iter()
    }

    pub fn len(&self) -> usize {
        self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }
}

async fn open_blocking(row: Served, options: SignerOptions) -> Result<Issuer, IssuerLoadError> {
    let name = row.name.clone();
    tokio::task::spawn_blocking(move || Issuer::from_row(row, &options)).await.unwrap_or_else(|join| {
        Err(IssuerLoadError::Invalid { name, reason: format!("opening the signer panicked: {join}") })
    })
}

/// The Postgres channel every change to the `issuers` table is notified on (sql/0005).
pub const CHANNEL: &str = "jitocsp_issuers";

/// How long a failed reload waits before it tries again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The issuer set a running responder serves, replaced whole when the `issuers` table changes.
pub struct LiveIssuers {
    current: ArcSwap<IssuerSet>,
    stale: tokio::sync::Notify,
}

impl LiveIssuers {
    pub fn new(issuers: IssuerSet) -> Self {
        LiveIssuers { current: ArcSwap::from_pointee(issuers), stale: tokio::sync::Notify::new() }
    }

    /// The set as it is now: a lock-free read. Hold it briefly (not across an await).
    pub fn current(&self) -> arc_swap::Guard<Arc<IssuerSet>> {
        self.current.load()
    }

    /// The set as it is now, to keep.
    pub fn snapshot(&self) -> Arc<IssuerSet> {
        self.current.load_full()
    }

    /// Swaps in another set, as a reload does.
    #[cfg(test)]
    pub(crate) fn replace(&self, issuers: IssuerSet) {
        self.current.store(Arc::new(issuers));
    }

    /// The `issuers` table may have changed: [`LiveIssuers::keep_current`] reloads. Calls
    /// that arrive while a reload runs cause one more reload after it, never none.
    pub fn mark_stale(&self) {
        self.stale.notify_one();
    }

    /// Runs forever: waits for [`LiveIssuers::mark_stale`], reloads from `database_url`
    /// (TLS as `tls` and the URL's `sslmode` say; retrying every second while Postgres cannot
    /// be read), and swaps the new set in.
    pub async fn keep_current(&self, database_url: &str, tls: &TlsFiles, options: &SignerOptions) {
        loop {
            self.stale.notified().await;
            loop {
                match self.reload_once(database_url, tls, options).await {
                    Ok(()) => break,
                    Err(error) => {
                        metrics::counter!(crate::metrics::ISSUER_RELOAD_FAILURES).increment(1);
                        tracing::warn!(%error, "cannot reload the issuers; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }

    async fn reload_once(
        &self,
        database_url: &str,
        tls: &TlsFiles,
        options: &SignerOptions,
    ) -> Result<(), IssuerLoadError> {
        let client = crate::db::connect(database_url, tls).await?;
        let reloaded = self.snapshot().reload(&client, options).await?;
        self.current.store(Arc::new(reloaded));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::P256Backend;

    const CA_DER: &[u8] = include_bytes!("../tests/fixtures/unit-ca.der");
    const CA_KEY: &[u8] = include_bytes!("../tests/fixtures/unit-ca.key");

    fn options() -> SignerOptions {
        SignerOptions {
            pkcs11_sessions: 1,
            pkcs11_retry: std::time::Duration::from_secs(1),
            p256_backend: P256Backend::Ring,
        }
    }

    #[test]
    fn a_signer_for_another_key_is_refused_and_one_that_cannot_be_opened_stands_aside() {
        // An owner-only copy: git checks the fixture out 0644, which a key file may not be.
        let dir = tempfile::tempdir().unwrap();
        let ca_key = dir.path().join("ca.key");
        std::fs::write(&ca_key, CA_KEY).unwrap();
        std::fs::set_permissions(&ca_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let issuer =
            Issuer::open(1, "unit".into(), CA_DER, None, &format!("file:{}", ca_key.display()), &options()).unwrap();
        assert!(issuer.signer().check().is_ok());

        let other = dir.path().join("other.key");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
            .arg(&other)
            .status()
            .unwrap();
        assert!(made.success());
        let spec = format!("file:{}", other.display());
        let Err(IssuerLoadError::Invalid { reason, .. }) =
            Issuer::open(1, "unit".into(), CA_DER, None, &spec, &options())
        else {
            panic!("a signer for another key was accepted");
        };
        assert!(reason.contains("not the key of the issuer certificate"), "{reason}");
        let opened = crate::signer::software::SoftwareSigner::from_pem_file(other.to_str().unwrap()).unwrap();
        assert!(Issuer::with_signer(1, "unit".into(), CA_DER, None, Arc::new(opened)).is_err());

        // Cannot be opened: served without it (misses get tryLater), not a start-up failure.
        let missing = format!("file:{}", dir.path().join("missing.key").display());
        let issuer = Issuer::open(1, "unit".into(), CA_DER, None, &missing, &options()).unwrap();
        assert!(issuer.signer().check().is_err());
    }

    #[test]
    fn issuers_with_the_same_certid_are_found() {
        let a = CertIdHashes { name_sha1: [1; 20], key_sha1: [2; 20], name_sha256: [3; 32], key_sha256: [4; 32] };
        let other_key = CertIdHashes { key_sha1: [5; 20], key_sha256: [6; 32], ..a.clone() };
        let other_name = CertIdHashes { name_sha1: [7; 20], name_sha256: [8; 32], ..a.clone() };
        assert!(shadowed(&[&a, &other_key, &other_name]).is_empty());
        assert_eq!(shadowed(&[&a, &other_key, &a.clone(), &other_key.clone()]), vec![(2, 0), (3, 1)]);
    }
}
