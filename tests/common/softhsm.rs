//! SoftHSM2 tokens for the PKCS#11 tests, made by scripts/softhsm.sh.

use std::path::{Path, PathBuf};

use super::{must, unique};

/// A SoftHSM2 token in a temporary directory, made by scripts/softhsm.sh.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    pub module: String,
}

impl SoftHsm {
    pub const PIN_VAR: &'static str = "JITOCSP_TEST_PKCS11_PIN";

    pub fn new() -> SoftHsm {
        SoftHsm::with_pin(&format!("{:08}", std::process::id()))
    }

    /// A token whose user PIN is `pin`.
    pub fn with_pin(pin: &str) -> SoftHsm {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm.sh");
        let dir = tempfile::tempdir().unwrap();
        let label: String = unique("t").chars().take(32).collect();
        let pin = pin.to_owned();
        let script = script.to_str().unwrap();
        must("bash", &[script, "init", dir.path().to_str().unwrap(), &label, &pin], dir.path());
        let module = String::from_utf8(must("bash", &[script, "module"], dir.path()).stdout).unwrap().trim().to_owned();
        let conf = dir.path().join("softhsm2.conf");
        SoftHsm { dir, conf, label, pin, module }
    }

    /// Imports a PEM private key as object `object` with CKA_ID `id_hex`.
    pub fn import(&self, object: &str, id_hex: &str, key: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm.sh");
        must(
            "bash",
            &[
                script.to_str().unwrap(),
                "import",
                self.dir.path().to_str().unwrap(),
                &self.label,
                &self.pin,
                object,
                id_hex,
                key.to_str().unwrap(),
            ],
            self.dir.path(),
        );
    }

    /// The signer URI of object `object` (and CKA_ID `id_hex`, if given).
    pub fn uri(&self, object: &str, id_hex: Option<&str>) -> String {
        let id = id_hex
            .map(|h| (0..h.len()).step_by(2).map(|i| format!("%{}", &h[i..i + 2])).collect::<String>())
            .map(|id| format!(";id={id}"))
            .unwrap_or_default();
        format!(
            "pkcs11:token={};object={object}{id}?module-path={}&pin-source=env:{}",
            self.label,
            self.module,
            Self::PIN_VAR
        )
    }

    /// Environment for jitocsp: the token's configuration and the PIN.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.to_str().unwrap().to_owned()), (Self::PIN_VAR, self.pin.clone())]
    }

    /// The token's directory (inside the token dir; one per token).
    pub fn token_dir(&self) -> PathBuf {
        std::fs::read_dir(self.dir.path().join("tokens")).unwrap().next().unwrap().unwrap().path()
    }
}
