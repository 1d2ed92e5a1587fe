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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use futures_util::future::BoxFuture;
use ring::hmac;
use sha2::{Digest, Sha256, Sha384};

use super::algorithm::{self, Curve, KeyKind};
use super::uri::{PinSource, Pkcs11Uri};
use super::{Signer, SignerError, SignerOptions};
use crate::metrics as m;
use crate::ocsp::response::TbsResponseData;

/// How long a request waits for a session's answer before tryLater (RFC 6960 responders must
/// answer within 10 s: Baseline Requirements 4.10.2). The session stays busy until the token
/// answers.
const SIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a signer whose token was never found may re-initialize the module.
const NEVER_SEEN_RESET_INTERVAL: Duration = Duration::from_secs(10);

/// One loaded and initialized module, shared by every signer that names it.
struct Module {
    path: PathBuf,
    context: Pkcs11,
    /// The generation of the current `C_Initialize`. Read-locked around every call into the
    /// module, write-locked to finalize and initialize it again: many modules (SoftHSM among
    /// them) only see a token that came back after that.
    generation: RwLock<u64>,
    /// Serializes logins, so the user logs in once per token; holds the PINs tokens refused,
    /// by token identity ([`token_identity`]).
    login: Mutex<HashMap<String, RefusedPin>>,
    last_reset: Mutex<Instant>,
}

impl Module {
    fn read(&self) -> RwLockReadGuard<'_, u64> {
        self.generation.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Finalizes and re-initializes the module, unless someone else did since `seen`, or it
    /// was done less than `interval` ago. Every session of the module is then invalid: their
    /// owners notice by the generation and open new ones.
    fn reset(&self, seen: u64, interval: Duration) -> bool {
        let mut last = self.last_reset.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < interval {
            return false;
        }
        let mut generation = self.generation.write().unwrap_or_else(|e| e.into_inner());
        *last = Instant::now();
        if *generation != seen {
            return true;
        }
        tracing::warn!(module = %self.path.display(), "re-initializing the PKCS#11 module to look for the token again");
        if let Err(e) = self.context.clone().finalize() {
            tracing::warn!(module = %self.path.display(), error = %short(&e), "C_Finalize failed");
        }
        if let Err(e) = self.context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            tracing::error!(module = %self.path.display(), error = %short(&e), "C_Initialize failed");
        }
        *generation += 1;
        true
    }
}

fn module(path: &Path) -> Result<Arc<Module>, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let context = Pkcs11::new(path).map_err(|e| format!("cannot load PKCS#11 module {}: {e}", path.display()))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("C_Initialize of {}: {}", path.display(), short(&e))),
    }
    let module = Arc::new(Module {
        path: path.to_owned(),
        context,
        generation: RwLock::new(0),
        login: Mutex::new(HashMap::new()),
        last_reset: Mutex::new(Instant::now()),
    });
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

/// A PIN a token refused. Only a fingerprint keyed with a per-process random key is kept:
/// enough to tell whether the PIN source still yields the same PIN, useless to recover a short
/// numeric PIN from (an unkeyed hash of one is a lookup away).
struct RefusedPin {
    fingerprint: hmac::Tag,
    code: RvError,
}

fn pin_fingerprint_key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).unwrap_or_else(|_| {
            // No system randomness (practically impossible on Linux): the fingerprint is only
            // compared in memory, so a key this process alone knows still serves.
            let seed = format!("{:?}{}", Instant::now(), std::process::id());
            hmac::Key::new(hmac::HMAC_SHA256, Sha256::digest(seed.as_bytes()).as_slice())
        })
    })
}

impl RefusedPin {
    fn is(&self, pin: &str) -> bool {
        hmac::verify(pin_fingerprint_key(), pin.as_bytes(), self.fingerprint.as_ref()).is_ok()
    }
}

/// The C_Login return values that say the PIN itself is refused, so presenting it again can only
/// bring the token closer to locking it: (CKR_ name, what it means, metric result).
fn pin_refusal(rv: RvError) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match rv {
        RvError::PinIncorrect => ("CKR_PIN_INCORRECT", "PIN incorrect", "pin_incorrect"),
        RvError::PinLocked => ("CKR_PIN_LOCKED", "PIN locked", "pin_locked"),
        RvError::PinLenRange => ("CKR_PIN_LEN_RANGE", "PIN length out of range", "pin_len_range"),
        RvError::PinExpired => ("CKR_PIN_EXPIRED", "PIN expired", "pin_expired"),
        RvError::PinInvalid => ("CKR_PIN_INVALID", "PIN invalid", "pin_invalid"),
        _ => return None,
    })
}

/// What `/readyz` and the log say while a refused PIN is withheld.
fn refusal_problem(code: RvError, token: &str, source: &PinSource) -> String {
    let (name, meaning, _) = pin_refusal(code).unwrap_or(("CKR_PIN_INCORRECT", "PIN refused", ""));
    let how = match source {
        PinSource::Env(_) => "an environment variable: restart with the right PIN",
        PinSource::File(_) => "write the right PIN to the file; no restart needed",
    };
    let locked = if code == RvError::PinLocked { "; unlock the user PIN on the token first" } else { "" };
    format!("{meaning} ({name}) for token {token}; not retrying until the PIN source {source} changes ({how}){locked}")
}

/// Which token a refusal belongs to, stable across module re-initializations (slot ids are
/// not), and its name for people.
fn token_identity(token: &cryptoki::slot::TokenInfo) -> (String, String) {
    let (label, serial) = (token.label().trim_end(), token.serial_number().trim_end());
    let identity = format!("{}/{}/{serial}/{label}", token.manufacturer_id().trim_end(), token.model().trim_end());
    (identity, format!("{label} (serial {serial})"))
}

/// A PKCS#11 error without the specification's paragraph.
fn short(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

/// The key the signer was opened for: the signing certificate's.
struct Identity {
    kind: KeyKind,
    spki: Vec<u8>,
}

#[derive(Default)]
struct Health {
    /// Why the signer cannot sign now; None when the last attempt succeeded.
    problem: Option<String>,
    /// When a session was last opened, or failed to open.
    last_attempt: Option<Instant>,
}

struct Shared {
    uri: Pkcs11Uri,
    module_path: PathBuf,
    description: String,
    retry: Duration,
    identity: Identity,
    health: Mutex<Health>,
    sessions_open: AtomicUsize,
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
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason to refuse at once: down, and the last attempt was less than `retry` ago.
    fn refusal(&self) -> Option<String> {
        let health = self.health();
        let problem = health.problem.as_ref()?;
        let recent = health.last_attempt.is_some_and(|t| t.elapsed() < self.retry);
        recent.then(|| problem.clone())
    }

    fn retry_due(&self) -> bool {
        let health = self.health();
        health.problem.is_some() && health.last_attempt.is_none_or(|t| t.elapsed() >= self.retry)
    }

    /// Starts the session threads not started yet.
    fn start_workers(self: &Arc<Self>, first: Option<Conn>) -> Result<(), String> {
        let mut started = self.workers_started.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = first;
        while *started < self.workers_wanted {
            let (shared, conn) = (self.clone(), first.take());
            std::thread::Builder::new()
                .name(format!("pkcs11-{}", *started))
                .spawn(move || worker(shared, conn))
                .map_err(|e| format!("cannot start a session thread: {e}"))?;
            *started += 1;
        }
        Ok(())
    }

    fn mark_up(self: &Arc<Self>) {
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

    fn mark_down(&self, problem: &str) {
        let mut health = self.health();
        health.last_attempt = Some(Instant::now());
        if health.problem.as_deref() != Some(problem) {
            tracing::error!(signer = %self.description, %problem, "PKCS#11 signer down: misses get tryLater until it recovers");
        }
        health.problem = Some(problem.to_owned());
    }
}

/// How a key signs.
#[derive(Clone, Copy)]
enum Plan {
    Ecdsa(Curve),
    RsaSha256,
    /// CKM_RSA_PKCS over a SHA-256 DigestInfo, for tokens without CKM_SHA256_RSA_PKCS.
    RsaDigestInfo,
}

/// One open session with the key found in it.
struct Conn {
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

/// Why no session could be made ready to sign.
enum Unready {
    /// The token holds another key than the signing certificate's under the URI's name.
    WrongKey(String),
    /// Anything else: the module, the token, the login, the key lookup.
    Down(String),
}

impl From<String> for Unready {
    fn from(problem: String) -> Self {
        Unready::Down(problem)
    }
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::WrongKey(problem) | Unready::Down(problem) => f.write_str(problem),
        }
    }
}

/// Opens a session on the token, logs in if needed, finds the key and checks it. When no
/// token matches, the module is re-initialized (at most once per retry interval, and at most
/// once a second) and the token looked for again.
fn connect(shared: &Arc<Shared>) -> Result<Conn, Unready> {
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
        return match prepare(shared, &module, slot, &session) {
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

/// Logs in if needed, finds the key, checks it is the expected one, picks the mechanism.
fn prepare(shared: &Shared, module: &Module, slot: Slot, session: &Session) -> Result<(ObjectHandle, Plan), Unready> {
    let state = session.get_session_info().map_err(|e| format!("session info: {}", short(&e)))?.session_state();
    if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
        let token = module.context.get_token_info(slot).ok();
        if token.as_ref().is_none_or(|t| t.login_required()) {
            let (identity, name) = token
                .as_ref()
                .map(token_identity)
                .unwrap_or_else(|| (slot.id().to_string(), format!("in slot {}", slot.id())));
            login(shared, module, session, &identity, &name)?;
        }
    }
    let (key, kind, spki) = find_key(session, &shared.uri)?;
    if spki != shared.identity.spki {
        return Err(Unready::WrongKey(format!(
            "the key {} on the token is not the key of the signing certificate",
            shared.uri.key_description()
        )));
    }
    let plan = match kind {
        KeyKind::Ec(curve) => Plan::Ecdsa(curve),
        KeyKind::Rsa { .. } => {
            let mechanisms = module.context.get_mechanism_list(slot).unwrap_or_default();
            if mechanisms.contains(&MechanismType::SHA256_RSA_PKCS) || !mechanisms.contains(&MechanismType::RSA_PKCS) {
                Plan::RsaSha256
            } else {
                Plan::RsaDigestInfo
            }
        }
    };
    Ok((key, plan))
}

/// Logs the user in, unless the token refused the PIN the source yields now (see
/// [`RefusedPin`]). Every C_Login is counted in [`m::PKCS11_LOGINS`], every one withheld in
/// [`m::PKCS11_LOGINS_WITHHELD`].
fn login(shared: &Shared, module: &Module, session: &Session, token: &str, name: &str) -> Result<(), String> {
    let mut refused = module.login.lock().unwrap_or_else(|e| e.into_inner());
    let source = shared.uri.pin_source.as_ref().ok_or("the token needs a PIN: add pin-source=env:NAME")?;
    let pin = source.read()?;
    let fingerprint = hmac::sign(pin_fingerprint_key(), pin.as_bytes());
    let same_as_refused = refused.get(token).map(|refusal| (refusal.is(&pin), refusal.code));
    // Into the zeroizing wrapper at once, whichever way this ends.
    let pin = AuthPin::from(pin);
    match same_as_refused {
        Some((true, code)) => {
            metrics::counter!(m::PKCS11_LOGINS_WITHHELD, "signer" => shared.description.clone()).increment(1);
            return Err(refusal_problem(code, name, source));
        }
        Some((false, _)) => {
            tracing::warn!(signer = %shared.description, %source, "the PIN source yields another PIN than the one the token refused: logging in again");
            refused.remove(token);
        }
        None => {}
    }
    let outcome = session.login(UserType::User, Some(&pin));
    let result = match &outcome {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => "ok",
        Err(CkError::Pkcs11(rv, _)) => pin_refusal(*rv).map_or("error", |(_, _, result)| result),
        Err(_) => "error",
    };
    metrics::counter!(m::PKCS11_LOGINS, "signer" => shared.description.clone(), "result" => result).increment(1);
    match outcome {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(rv, _)) if pin_refusal(rv).is_some() => {
            refused.insert(token.to_owned(), RefusedPin { fingerprint, code: rv });
            Err(refusal_problem(rv, name, source))
        }
        Err(e) => Err(format!("login: {}", short(&e))),
    }
}

fn find_slot(context: &Pkcs11, uri: &Pkcs11Uri) -> Result<Slot, String> {
    let slots = context.get_slots_with_token().map_err(|e| format!("listing slots: {}", short(&e)))?;
    let mut seen = Vec::new();
    for slot in slots {
        if uri.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        if uri.slot_description.is_some() || uri.slot_manufacturer.is_some() {
            let Ok(info) = context.get_slot_info(slot) else { continue };
            if uri.slot_description.as_deref().is_some_and(|d| d != info.slot_description().trim_end())
                || uri.slot_manufacturer.as_deref().is_some_and(|m| m != info.manufacturer_id().trim_end())
            {
                continue;
            }
        }
        let Ok(token) = context.get_token_info(slot) else { continue };
        if !token.token_initialized() {
            continue;
        }
        let label = token.label().trim_end();
        seen.push(label.to_owned());
        let matches = uri.token.as_deref().is_none_or(|t| t == label)
            && uri.manufacturer.as_deref().is_none_or(|m| m == token.manufacturer_id().trim_end())
            && uri.model.as_deref().is_none_or(|m| m == token.model().trim_end())
            && uri.serial.as_deref().is_none_or(|s| s == token.serial_number().trim_end());
        if matches {
            return Ok(slot);
        }
    }
    Err(format!(
        "no token matches {} (tokens present: {})",
        uri.token.as_deref().map(|t| format!("token={t}")).unwrap_or_else(|| "the URI".into()),
        if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
    ))
}

fn key_template(uri: &Pkcs11Uri, class: ObjectClass) -> Vec<Attribute> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    template
}

/// The private key named by the URI, its kind and its SubjectPublicKeyInfo (built from the
/// public key object with the same label/id, or from the private key's public attributes).
fn find_key(session: &Session, uri: &Pkcs11Uri) -> Result<(ObjectHandle, KeyKind, Vec<u8>), String> {
    let what = uri.key_description();
    let found = session
        .find_objects(&key_template(uri, ObjectClass::PRIVATE_KEY))
        .map_err(|e| format!("finding the key {what}: {}", short(&e)))?;
    let key = match found.as_slice() {
        [key] => *key,
        [] => return Err(format!("no private key {what} on the token")),
        _ => return Err(format!("{} private keys match {what}: add id= or object= to the URI", found.len())),
    };
    let key_type = session
        .get_attributes(key, &[AttributeType::KeyType])
        .map_err(|e| format!("reading the key type: {}", short(&e)))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or("the key has no CKA_KEY_TYPE")?;
    let public = session.find_objects(&key_template(uri, ObjectClass::PUBLIC_KEY)).unwrap_or_default();
    let public_or_private = public.first().copied().unwrap_or(key);
    if key_type == KeyType::EC {
        let attributes = session
            .get_attributes(public_or_private, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(|e| format!("reading the public key of {what}: {}", short(&e)))?;
        let (mut params, mut point) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let params = params.ok_or_else(|| format!("no public key object {what} with CKA_EC_PARAMS"))?;
        let curve = Curve::from_ec_params(&params).ok_or("EC key on a curve other than P-256 or P-384")?;
        let point = point.ok_or_else(|| format!("no public key object {what} with CKA_EC_POINT"))?;
        let point = algorithm::ec_point_from_attribute(&point, curve).ok_or("malformed CKA_EC_POINT")?;
        Ok((key, KeyKind::Ec(curve), algorithm::ec_spki(curve, &point)))
    } else if key_type == KeyType::RSA {
        let attributes = session
            .get_attributes(public_or_private, &[AttributeType::Modulus, AttributeType::PublicExponent])
            .map_err(|e| format!("reading the public key of {what}: {}", short(&e)))?;
        let (mut modulus, mut exponent) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
            return Err(format!("no readable CKA_MODULUS / CKA_PUBLIC_EXPONENT for {what}"));
        };
        let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < 2048 {
            return Err(format!("RSA key of {bits} bits: at least 2048 are required"));
        }
        Ok((key, KeyKind::Rsa { bits }, algorithm::rsa_spki(&modulus, &exponent)))
    } else {
        Err(format!("key {what} is of type {key_type}: expected EC (P-256, P-384) or RSA"))
    }
}

/// One signature to make.
struct Job {
    message: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, SignerError>>,
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
        let shared = Arc::new(Shared {
            description: format!("pkcs11 {} ({})", uri.key_description(), module_path.display()),
            module_path,
            uri,
            retry: options.pkcs11_retry.max(Duration::from_millis(10)),
            identity: Identity { kind, spki: expected_spki.to_vec() },
            health: Mutex::new(Health::default()),
            sessions_open: AtomicUsize::new(0),
            seen_token: AtomicBool::new(false),
            workers_wanted: options.pkcs11_sessions.max(1),
            workers_started: Mutex::new(0),
            jobs: Arc::new(Mutex::new(receiver)),
        });
        match connect(&shared) {
            Ok(conn) => {
                shared.start_workers(Some(conn)).map_err(open_error)?;
                shared.mark_up();
            }
            Err(Unready::WrongKey(_)) => return Err(SignerError::KeyMismatch { spec: spec.to_owned() }),
            Err(problem) if strict => return Err(open_error(problem.to_string())),
            Err(problem) => {
                shared.mark_down(&problem.to_string());
                // One thread retries; the others start once the token is reached.
                let mut started = shared.workers_started.lock().unwrap_or_else(|e| e.into_inner());
                let worker_shared = shared.clone();
                std::thread::Builder::new()
                    .name("pkcs11-0".into())
                    .spawn(move || worker(worker_shared, None))
                    .map_err(|e| open_error(format!("cannot start a session thread: {e}")))?;
                *started = 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_pin_is_recognized_by_its_fingerprint_only() {
        let refused =
            RefusedPin { fingerprint: hmac::sign(pin_fingerprint_key(), b"123456"), code: RvError::PinIncorrect };
        assert!(refused.is("123456"));
        assert!(!refused.is("123457") && !refused.is("") && !refused.is("1234567"));
        // Keyed: not the plain SHA-256 of the PIN, which a table of short PINs would reverse.
        assert_ne!(refused.fingerprint.as_ref(), Sha256::digest(b"123456").as_slice());
    }

    #[test]
    fn only_pin_errors_stop_the_retries_and_the_cause_is_named() {
        for (rv, name) in [
            (RvError::PinIncorrect, "CKR_PIN_INCORRECT"),
            (RvError::PinLocked, "CKR_PIN_LOCKED"),
            (RvError::PinLenRange, "CKR_PIN_LEN_RANGE"),
            (RvError::PinExpired, "CKR_PIN_EXPIRED"),
            (RvError::PinInvalid, "CKR_PIN_INVALID"),
        ] {
            assert_eq!(pin_refusal(rv).map(|(n, _, _)| n), Some(name));
            let file = refusal_problem(rv, "t", &PinSource::File("/run/pin".into()));
            assert!(file.contains(name) && file.contains("file:/run/pin") && file.contains("no restart"), "{file}");
            let env = refusal_problem(rv, "t", &PinSource::Env("PIN".into()));
            assert!(env.contains("env:PIN") && env.contains("restart with"), "{env}");
        }
        assert!(refusal_problem(RvError::PinLocked, "t", &PinSource::Env("PIN".into())).contains("unlock"));
        // Faults of the device or session say nothing about the PIN: those are retried.
        for rv in [
            RvError::DeviceError,
            RvError::SessionHandleInvalid,
            RvError::TokenNotPresent,
            RvError::UserPinNotInitialized,
        ] {
            assert!(pin_refusal(rv).is_none(), "{rv:?}");
        }
    }
}
