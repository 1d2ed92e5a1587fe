//! The loaded PKCS#11 modules (one per library path, for the whole process) and logging in to
//! their tokens, with the refused-PIN memory that keeps a wrong PIN from being presented
//! again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ring::hmac;
use sha2::{Digest, Sha256};

use super::super::uri::PinSource;
use crate::metrics as m;

/// One loaded and initialized module, shared by every signer that names it.
pub(super) struct Module {
    path: PathBuf,
    pub(super) context: Pkcs11,
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
    pub(super) fn read(&self) -> RwLockReadGuard<'_, u64> {
        self.generation.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Finalizes and re-initializes the module, unless someone else did since `seen`, or it
    /// was done less than `interval` ago. Every session of the module is then invalid: their
    /// owners notice by the generation and open new ones.
    pub(super) fn reset(&self, seen: u64, interval: Duration) -> bool {
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

pub(super) fn module(path: &Path) -> Result<Arc<Module>, String> {
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
pub(super) fn token_identity(token: &cryptoki::slot::TokenInfo) -> (String, String) {
    let (label, serial) = (token.label().trim_end(), token.serial_number().trim_end());
    let identity = format!("{}/{}/{serial}/{label}", token.manufacturer_id().trim_end(), token.model().trim_end());
    (identity, format!("{label} (serial {serial})"))
}

/// A PKCS#11 error without the specification's paragraph.
pub(super) fn short(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

/// Logs the user in, unless the token refused the PIN the source yields now (see
/// [`RefusedPin`]). Every C_Login is counted in [`m::PKCS11_LOGINS`], every one withheld in
/// [`m::PKCS11_LOGINS_WITHHELD`].
pub(super) fn login(
    pin_source: Option<&PinSource>,
    signer: &str,
    module: &Module,
    session: &Session,
    token: &str,
    name: &str,
) -> Result<(), String> {
    let mut refused = module.login.lock().unwrap_or_else(|e| e.into_inner());
    let source = pin_source.ok_or("the token needs a PIN: add pin-source=env:NAME")?;
    let pin = source.read()?;
    let fingerprint = hmac::sign(pin_fingerprint_key(), pin.as_bytes());
    let same_as_refused = refused.get(token).map(|refusal| (refusal.is(&pin), refusal.code));
    // Into the zeroizing wrapper at once, whichever way this ends.
    let pin = AuthPin::from(pin);
    match same_as_refused {
        Some((true, code)) => {
            metrics::counter!(m::PKCS11_LOGINS_WITHHELD, "signer" => signer.to_owned()).increment(1);
            return Err(refusal_problem(code, name, source));
        }
        Some((false, _)) => {
            tracing::warn!(signer, %source, "the PIN source yields another PIN than the one the token refused: logging in again");
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
    metrics::counter!(m::PKCS11_LOGINS, "signer" => signer.to_owned(), "result" => result).increment(1);
    match outcome {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(rv, _)) if pin_refusal(rv).is_some() => {
            refused.insert(token.to_owned(), RefusedPin { fingerprint, code: rv });
            Err(refusal_problem(rv, name, source))
        }
        Err(e) => Err(format!("login: {}", short(&e))),
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
