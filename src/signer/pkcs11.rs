//! PKCS#11 signer: a key in an HSM (or SoftHSM), named by an RFC 7512 URI.
//!
//! - The module is loaded and `C_Initialize`d once per process (a registry keyed by path), and
//!   the user logs in once per token: login state is shared by every session of the process,
//!   so only a session that finds itself logged out logs in, under a per-module lock.
//! - Each signer owns a pool of `signing.pkcs11_sessions` sessions, each on its own dedicated
//!   OS thread; the async workers only queue a job and await its reply. The queue holds at most
//!   `signing.max_in_flight` jobs, because the pipeline calls `sign` only while holding a
//!   signing permit: when every session is busy, requests wait in the limiter (bounded by
//!   `max_waiting`, then tryLater), never in an unbounded queue.
//! - Mechanisms: CKM_ECDSA over a SHA-256 / SHA-384 digest made here (P-256 / P-384; every HSM
//!   has CKM_ECDSA, SoftHSM 2.6 has no CKM_ECDSA_SHA256), converted from raw `r || s` to DER;
//!   CKM_SHA256_RSA_PKCS for RSA (or CKM_RSA_PKCS over a DigestInfo if the token lacks it).
//! - Faults: a session whose signature fails is closed and reopened once at once (the key is
//!   looked up again: handles do not survive a token reset). If that fails too, the signer is
//!   down: `check()` (and so `/readyz`) names the reason, misses get tryLater at once without
//!   touching the token, and one session retries every `signing.pkcs11_retry_ms`, so signing
//!   resumes without a restart when the token is back. While up, an idle pool probes its key
//!   at the same interval, so `/readyz` notices an outage without traffic.
//! - The signer is opened for the key of the signing certificate: the key found on the token
//!   must be that key, at opening (else [`SignerError::KeyMismatch`]) and at every session
//!   opened later (else the signer is down). A token that is absent at start-up does not stop
//!   the responder: the signer starts down and recovers the same way.
//! - The PIN comes from `pin-source` (environment or file), is read at each login and kept
//!   only in a zeroizing `SecretString`; it is never logged.
//! - A PIN the token refuses (CKR_PIN_INCORRECT, _LOCKED, _LEN_RANGE, _EXPIRED, _INVALID) is
//!   not presented again: real tokens lock the user PIN after a few failures, and a retry loop
//!   would lock it within seconds. The module remembers, per token, a keyed fingerprint of the
//!   refused PIN (never the PIN); each retry re-reads the PIN source and logs in again only
//!   when it yields a different PIN. Until then the signer is down and `/readyz` names the code.
//!
//! Here: the [`Signer`] itself. `pool`: the session threads and the signer's health.
//! `key`: finding the token and the key, and how the key signs. `module`: the loaded
//! modules and logging in.

mod key;
mod module;
mod pool;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::algorithm::KeyKind;
use super::uri::Pkcs11Uri;
use super::{Signer, SignerError, SignerOptions};
use crate::ocsp::response::TbsResponseData;
use key::Unready;
use pool::{connect, Identity, Job, Shared};

/// How long a request waits for a session's answer before tryLater (RFC 6960 responders must
/// answer within 10 s: Baseline Requirements 4.10.2). The session stays busy until the token
/// answers.
const SIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// A key in a PKCS#11 token, signing through a pool of sessions on dedicated threads.
pub struct Pkcs11Signer {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl Pkcs11Signer {
    /// Opens the signer for the key `expected_spki` (DER SubjectPublicKeyInfo). With `strict`
    /// (the admin CLI), the token must be there and the key found; otherwise (serving) a
    /// signer that cannot reach its token yet starts down and keeps trying. A malformed URI,
    /// and a token found holding another key, are always errors.
    pub fn open(spec: &str, expected_spki: &[u8], options: &SignerOptions, strict: bool) -> Result<Self, SignerError> {
        let open_error = |reason: String| SignerError::Open { spec: spec.to_owned(), reason };
        let invalid = |reason: String| SignerError::Invalid { spec: spec.to_owned(), reason };
        let uri = Pkcs11Uri::parse(spec).map_err(invalid)?;
        // A certificate key no signer supports cannot be the key of one.
        let kind =
            KeyKind::from_spki(expected_spki).ok_or_else(|| SignerError::KeyMismatch { spec: spec.to_owned() })?;
        let module_path = uri.module().map_err(open_error)?;
        let (sender, receiver) = mpsc::channel();
        let identity = Identity { kind, spki: expected_spki.to_vec() };
        let shared = Arc::new(Shared::new(uri, module_path, identity, options, receiver));
        match connect(&shared) {
            Ok(conn) => {
                shared.start_workers(Some(conn)).map_err(open_error)?;
                shared.mark_up();
            }
            Err(Unready::WrongKey(_)) => return Err(SignerError::KeyMismatch { spec: spec.to_owned() }),
            Err(problem) if strict => return Err(open_error(problem.to_string())),
            Err(problem) => {
                shared.mark_down(&problem.to_string());
                shared.start_retrying().map_err(open_error)?;
            }
        }
        Ok(Pkcs11Signer { shared, jobs: sender })
    }

    /// Sessions currently open.
    pub fn sessions_open(&self) -> usize {
        self.shared.sessions_open.load(Ordering::Relaxed)
    }
}

impl Signer for Pkcs11Signer {
    fn algorithm_der(&self) -> &[u8] {
        self.shared.identity.kind.algorithm_der()
    }

    fn public_key_spki_der(&self) -> &[u8] {
        &self.shared.identity.spki
    }

    fn sign<'a>(&'a self, tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        if let Some(problem) = self.shared.refusal() {
            return Box::pin(std::future::ready(Err(SignerError::Sign(format!(
                "PKCS#11 token unavailable: {problem}"
            )))));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self.jobs.send(Job { message: tbs.as_bytes().to_vec(), reply });
        Box::pin(async move {
            sent.map_err(|_| SignerError::Sign("PKCS#11 session threads are gone".into()))?;
            match tokio::time::timeout(SIGN_TIMEOUT, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(SignerError::Sign("PKCS#11 session thread ended".into())),
                Err(_) => Err(SignerError::Sign(format!("PKCS#11 token did not answer within {SIGN_TIMEOUT:?}"))),
            }
        })
    }

    fn describe(&self) -> &str {
        &self.shared.description
    }

    fn check(&self) -> Result<(), SignerError> {
        match &self.shared.health().problem {
            None => Ok(()),
            Some(problem) => Err(SignerError::Sign(format!("PKCS#11 token unavailable: {problem}"))),
        }
    }
}
