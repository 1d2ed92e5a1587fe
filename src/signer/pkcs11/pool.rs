//! The session pool: one dedicated OS thread per session, signing jobs from a shared queue,
//! reopening a failed session once, and keeping the signer's health (down, recovered) for
//! `check()` and the retries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256, Sha384};

use super::super::algorithm::{self, Curve, KeyKind};
use super::super::uri::Pkcs11Uri;
use super::super::{SignerError, SignerOptions};
use super::key::{find_slot, prepare, Plan, Unready};
use super::module::{module, short, Module};

/// How often a signer whose token was never found may re-initialize the module.
const NEVER_SEEN_RESET_INTERVAL: Duration = Duration::from_secs(10);

/// The key the signer was opened for: the signing certificate's.
pub(super) struct Identity {
    pub(super) kind: KeyKind,
    pub(super) spki: Vec<u8>,
}

#[derive(Default)]
pub(super) struct Health {
    /// Why the signer cannot sign now; None when the last attempt succeeded.
    pub(super) problem: Option<String>,
    /// When a session was last opened, or failed to open.
    last_attempt: Option<Instant>,
}

/// What the signer and its session threads share.
pub(super) struct Shared {
    uri: Pkcs11Uri,
    module_path: PathBuf,
    pub(super) description: String,
    retry: Duration,
    pub(super) identity: Identity,
    health: Mutex<Health>,
    pub(super) sessions_open: AtomicUsize,
    /// The token was found at least once: if it disappears, re-initializing the module soon
    /// is worth it. A token never seen (a stale configuration) resets the module rarely, as
    /// that costs every other token of the module its sessions.
    seen_token: AtomicBool,
    /// Session threads wanted, and those started: a signer that starts down runs one thread
    /// until its token is first reached.
    workers_wanted: usize,
    workers_started: Mutex<usize>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
}

impl Shared {
    pub(super) fn new(
        uri: Pkcs11Uri,
        module_path: PathBuf,
        identity: Identity,
        options: &SignerOptions,
        jobs: mpsc::Receiver<Job>,
    ) -> Self {
        Shared {
            description: format!("pkcs11 {} ({})", uri.key_description(), module_path.display()),
            module_path,
            uri,
            retry: options.pkcs11_retry.max(Duration::from_millis(10)),
            identity,
            health: Mutex::new(Health::default()),
            sessions_open: AtomicUsize::new(0),
            seen_token: AtomicBool::new(false),
            workers_wanted: options.pkcs11_sessions.max(1),
            workers_started: Mutex::new(0),
            jobs: Arc::new(Mutex::new(jobs)),
        }
    }

    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason to refuse at once: down, and the last attempt was less than `retry` ago.
    pub(super) fn refusal(&self) -> Option<String> {
        let health = self.health();
        let problem = health.problem.as_ref()?;
        let recent = health.last_attempt.is_some_and(|t| t.elapsed() < self.retry);
        recent.then(|| problem.clone())
    }

    fn retry_due(&self) -> bool {
        let health = self.health();
        health.problem.is_some() && health.last_attempt.is_none_or(|t| t.elapsed() >= self.retry)
    }

    /// Starts the session threads not started yet; the first one gets `first`.
    pub(super) fn start_workers(self: &Arc<Self>, first: Option<Conn>) -> Result<(), String> {
        self.start_workers_up_to(self.workers_wanted, first)
    }

    /// Starts the one thread that retries a token not reached yet; the others start once it
    /// is reached.
    pub(super) fn start_retrying(self: &Arc<Self>) -> Result<(), String> {
        self.start_workers_up_to(1, None)
    }

    fn start_workers_up_to(self: &Arc<Self>, wanted: usize, first: Option<Conn>) -> Result<(), String> {
        let mut started = self.workers_started.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = first;
        while *started < wanted {
            let (shared, conn) = (self.clone(), first.take());
            std::thread::Builder::new()
                .name(format!("pkcs11-{}", *started))
                .spawn(move || worker(shared, conn))
                .map_err(|e| format!("cannot start a session thread: {e}"))?;
            *started += 1;
        }
        Ok(())
    }

    pub(super) fn mark_up(self: &Arc<Self>) {
        self.seen_token.store(true, Ordering::Relaxed);
        if let Err(e) = self.start_workers(None) {
            tracing::error!(signer = %self.description, error = %e, "PKCS#11 signer runs with fewer sessions");
        }
        let mut health = self.health();
        health.last_attempt = Some(Instant::now());
        if let Some(problem) = health.problem.take() {
            tracing::warn!(signer = %self.description, was = %problem, "PKCS#11 signer recovered: signing resumes");
        }
    }

    pub(super) fn mark_down(&self, problem: &str) {
        let mut health = self.health();
        health.last_attempt = Some(Instant::now());
        if health.problem.as_deref() != Some(problem) {
            tracing::error!(signer = %self.description, %problem, "PKCS#11 signer down: misses get tryLater until it recovers");
        }
        health.problem = Some(problem.to_owned());
    }
}

/// One open session with the key found in it.
pub(super) struct Conn {
    /// Opened without close-on-drop: after a module reset its handle is void (and may have
    /// been reused), so it is closed only while its generation is current.
    session: Option<Session>,
    generation: u64,
    module: Arc<Module>,
    key: ObjectHandle,
    plan: Plan,
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.sessions_open.fetch_sub(1, Ordering::Relaxed);
        let current = self.module.read();
        if let Some(session) = self.session.take() {
            if *current == self.generation {
                let _ = session.close();
            }
        }
    }
}

/// The module was re-initialized since this session was opened.
const STALE: CkError = CkError::Pkcs11(RvError::SessionHandleInvalid, cryptoki::context::Function::Sign);

impl Conn {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CkError> {
        let current = self.module.read();
        let Some(session) = self.session.as_ref().filter(|_| *current == self.generation) else {
            return Err(STALE);
        };
        match self.plan {
            Plan::Ecdsa(curve) => {
                let digest = match curve {
                    Curve::P256 => Sha256::digest(message).to_vec(),
                    Curve::P384 => Sha384::digest(message).to_vec(),
                };
                let raw = session.sign(&Mechanism::Ecdsa, self.key, &digest)?;
                algorithm::ecdsa_raw_to_der(&raw, curve).ok_or(CkError::InvalidValue)
            }
            Plan::RsaSha256 => session.sign(&Mechanism::Sha256RsaPkcs, self.key, message),
            Plan::RsaDigestInfo => {
                let input = [algorithm::SHA256_DIGEST_INFO_PREFIX, &Sha256::digest(message)].concat();
                session.sign(&Mechanism::RsaPkcs, self.key, &input)
            }
        }
    }

    /// A cheap liveness check: the session and the key are still there.
    fn probe(&self) -> Result<(), CkError> {
        let current = self.module.read();
        let Some(session) = self.session.as_ref().filter(|_| *current == self.generation) else {
            return Err(STALE);
        };
        session.get_session_info()?;
        session.get_attributes(self.key, &[AttributeType::KeyType])?;
        Ok(())
    }
}

/// Opens a session on the token, logs in if needed, finds the key and checks it. When no
/// token matches, the module is re-initialized (at most once per retry interval, and at most
/// once a second) and the token looked for again.
pub(super) fn connect(shared: &Arc<Shared>) -> Result<Conn, Unready> {
    let module = module(&shared.module_path)?;
    let mut reset = false;
    loop {
        let current = module.read();
        let generation = *current;
        let slot = match find_slot(&module.context, &shared.uri) {
            Ok(slot) => slot,
            Err(problem) => {
                drop(current);
                let interval = if shared.seen_token.load(Ordering::Relaxed) {
                    shared.retry.max(Duration::from_secs(1))
                } else {
                    shared.retry.max(NEVER_SEEN_RESET_INTERVAL)
                };
                if !reset && module.reset(generation, interval) {
                    reset = true;
                    continue;
                }
                return Err(problem.into());
            }
        };
        let session =
            module.context.open_ro_session_no_drop(slot).map_err(|e| format!("opening a session: {}", short(&e)))?;
        return match prepare(&shared.uri, &shared.description, &shared.identity.spki, &module, slot, &session) {
            Ok((key, plan)) => {
                drop(current);
                shared.sessions_open.fetch_add(1, Ordering::Relaxed);
                Ok(Conn { session: Some(session), generation, module, key, plan, shared: shared.clone() })
            }
            Err(problem) => {
                let _ = session.close();
                Err(problem)
            }
        };
    }
}

/// One signature to make.
pub(super) struct Job {
    pub(super) message: Vec<u8>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, SignerError>>,
}

/// A session's thread: signs jobs from the shared queue with its own session.
fn worker(shared: Arc<Shared>, mut conn: Option<Conn>) {
    loop {
        let next = {
            let jobs = shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv_timeout(shared.retry)
        };
        match next {
            Ok(job) => {
                let result = sign_job(&shared, &mut conn, &job.message);
                let _ = job.reply.send(result);
            }
            Err(RecvTimeoutError::Timeout) => idle(&shared, &mut conn),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Idle: retry when down, or check that the token is still there when up.
fn idle(shared: &Arc<Shared>, conn: &mut Option<Conn>) {
    if let Some(open) = conn.as_ref() {
        if open.probe().is_ok() {
            return;
        }
        *conn = None;
    } else if !shared.retry_due() {
        return;
    }
    match connect(shared) {
        Ok(fresh) => {
            *conn = Some(fresh);
            shared.mark_up();
        }
        Err(problem) => shared.mark_down(&problem.to_string()),
    }
}

fn sign_job(shared: &Arc<Shared>, conn: &mut Option<Conn>, message: &[u8]) -> Result<Vec<u8>, SignerError> {
    let mut failure = String::new();
    for attempt in 0..2 {
        if conn.is_none() {
            if attempt == 0 {
                if let Some(problem) = shared.refusal() {
                    return Err(SignerError::Sign(format!("PKCS#11 token unavailable: {problem}")));
                }
            }
            match connect(shared) {
                Ok(fresh) => {
                    *conn = Some(fresh);
                    shared.mark_up();
                }
                Err(problem) => {
                    shared.mark_down(&problem.to_string());
                    let after = if failure.is_empty() { String::new() } else { format!(" (after {failure})") };
                    return Err(SignerError::Sign(format!("PKCS#11 token unavailable: {problem}{after}")));
                }
            }
        }
        let Some(open) = conn.as_ref() else { continue };
        match open.sign(message) {
            Ok(signature) => return Ok(signature),
            Err(error) => {
                // Device, session, token and handle errors all mean this session is no good:
                // close it and try once more with a fresh one (which finds the key again).
                failure = short(&error);
                tracing::warn!(signer = %shared.description, error = %failure, "PKCS#11 signature failed: reopening the session");
                *conn = None;
            }
        }
    }
    shared.mark_down(&failure);
    Err(SignerError::Sign(format!("PKCS#11 signature failed: {failure}")))
}
