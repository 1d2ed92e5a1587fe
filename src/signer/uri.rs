//! RFC 7512 PKCS#11 URIs, as far as a signer needs them.
//!
//! `pkcs11:token=jitocsp;object=issuer-e1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:JITOCSP_PKCS11_PIN`
//!
//! Path attributes select the token (`token`, `manufacturer`, `serial`, `model`, `slot-id`,
//! `slot-description`, `slot-manufacturer`) and the key (`object` = CKA_LABEL, `id` = CKA_ID as
//! percent-encoded bytes, `type` = `private` if given). Query attributes: `module-path` (or
//! `module-name`, looked up in the usual PKCS#11 directories) and `pin-source`, which is
//! `env:NAME` or `file:PATH` (a bare absolute path is a file). `pin-value` is refused: the URI is
//! stored in the database and printed by `issuer list`, so the PIN must never be in it.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Where the user PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    Env(String),
    File(PathBuf),
}

impl PinSource {
    /// Reads the PIN now (a file may appear, or change, while the responder runs).
    pub fn read(&self) -> Result<String, String> {
        match self {
            PinSource::Env(name) => {
                std::env::var(name).map_err(|_| format!("the PIN environment variable {name} is not set"))
            }
            PinSource::File(path) => crate::secret_file::read_to_string(path)
                .map(|pin| pin.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("PIN file: {}", crate::secret_file::error_chain(&e))),
        }
    }
}

/// As written in the URI (`env:NAME`, `file:PATH`): names where the PIN is, never the PIN.
impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinSource::Env(name) => write!(f, "env:{name}"),
            PinSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A parsed `pkcs11:` URI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
    pub slot_description: Option<String>,
    pub slot_manufacturer: Option<String>,
    /// CKA_LABEL of the key.
    pub object: Option<String>,
    /// CKA_ID of the key.
    pub id: Option<Vec<u8>>,
    pub module_path: Option<String>,
    pub module_name: Option<String>,
    pub pin_source: Option<PinSource>,
}

const MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib64/pkcs11",
    "/usr/local/lib/pkcs11",
    "/usr/lib/softhsm",
    "/usr/lib64/softhsm",
    "/usr/local/lib/softhsm",
];

impl Pkcs11Uri {
    /// Parses `uri`; every error names the offending attribute.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, String> {
        let rest = uri.strip_prefix("pkcs11:").ok_or("a PKCS#11 URI starts with \"pkcs11:\"")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parsed = Pkcs11Uri::default();
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) =
                attribute.split_once('=').ok_or_else(|| format!("attribute {attribute:?} has no '='"))?;
            let text = || decode_text(name, value);
            match name {
                "token" => set(&mut parsed.token, name, text()?)?,
                "manufacturer" => set(&mut parsed.manufacturer, name, text()?)?,
                "serial" => set(&mut parsed.serial, name, text()?)?,
                "model" => set(&mut parsed.model, name, text()?)?,
                "slot-description" => set(&mut parsed.slot_description, name, text()?)?,
                "slot-manufacturer" => set(&mut parsed.slot_manufacturer, name, text()?)?,
                "slot-id" => {
                    let id = text()?.parse().map_err(|_| format!("slot-id {value:?} is not a number"))?;
                    set(&mut parsed.slot_id, name, id)?
                }
                "object" => set(&mut parsed.object, name, text()?)?,
                "id" => set(&mut parsed.id, name, percent_decode_str(value).collect())?,
                "type" => {
                    if text()? != "private" {
                        return Err(format!("type={value}: a signer needs the private key (type=private)"));
                    }
                }
                "library-manufacturer" | "library-description" | "library-version" => {}
                other => return Err(format!("unknown path attribute {other:?}")),
            }
        }
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) =
                attribute.split_once('=').ok_or_else(|| format!("attribute {attribute:?} has no '='"))?;
            match name {
                "module-path" => set(&mut parsed.module_path, name, decode_text(name, value)?)?,
                "module-name" => set(&mut parsed.module_name, name, decode_text(name, value)?)?,
                "pin-source" => {
                    let source = decode_text(name, value)?;
                    let source = if let Some(var) = source.strip_prefix("env:") {
                        PinSource::Env(var.to_owned())
                    } else if let Some(path) = source.strip_prefix("file:") {
                        PinSource::File(PathBuf::from(path.strip_prefix("//").unwrap_or(path)))
                    } else if source.starts_with('/') {
                        PinSource::File(PathBuf::from(source))
                    } else {
                        return Err("pin-source must be env:NAME or file:PATH".into());
                    };
                    set(&mut parsed.pin_source, name, source)?
                }
                "pin-value" => {
                    return Err("pin-value is refused: the PIN must not be stored in the signer URI; \
                                use pin-source=env:NAME or pin-source=file:PATH"
                        .into())
                }
                other => return Err(format!("unknown query attribute {other:?}")),
            }
        }
        if parsed.object.is_none() && parsed.id.is_none() {
            return Err("name the key with object=LABEL and/or id=%XX...".into());
        }
        if parsed.module_path.is_none() && parsed.module_name.is_none() {
            return Err("name the PKCS#11 module with module-path=/path/to/module.so".into());
        }
        Ok(parsed)
    }

    /// The module's file: `module-path`, or `module-name` found in the usual directories.
    pub fn module(&self) -> Result<PathBuf, String> {
        if let Some(path) = &self.module_path {
            return Ok(PathBuf::from(path));
        }
        let name = self.module_name.as_deref().unwrap_or_default();
        let files = [format!("{name}.so"), format!("lib{name}.so"), name.to_owned()];
        MODULE_DIRS
            .iter()
            .flat_map(|dir| files.iter().map(move |f| PathBuf::from(dir).join(f)))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("module-name={name}: not found in {}", MODULE_DIRS.join(", ")))
    }

    /// A short description of the key, for logs (never the PIN; the URI holds none).
    pub fn key_description(&self) -> String {
        let mut parts = Vec::new();
        if let Some(token) = &self.token {
            parts.push(format!("token={token}"));
        }
        if let Some(object) = &self.object {
            parts.push(format!("object={object}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id={}", hex::encode(id)));
        }
        parts.join(";")
    }
}

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("attribute {name} given twice"));
    }
    Ok(())
}

fn decode_text(name: &str, value: &str) -> Result<String, String> {
    percent_decode_str(value).decode_utf8().map(|v| v.into_owned()).map_err(|_| format!("{name}: not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.pin");
        std::fs::write(&path, "123456\n").unwrap();
        let source = PinSource::File(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = source.read().unwrap_err();
        assert!(refused.contains(&path.display().to_string()) && refused.contains("mode 0644"), "{refused}");
        assert!(!refused.contains("123456"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(source.read().unwrap(), "123456");
    }

    #[test]
    fn parses_the_documented_example() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=jitocsp;object=issuer-e1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:JITOCSP_PKCS11_PIN",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("jitocsp"));
        assert_eq!(uri.object.as_deref(), Some("issuer-e1"));
        assert_eq!(uri.module().unwrap(), PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(uri.pin_source, Some(PinSource::Env("JITOCSP_PKCS11_PIN".into())));
    }

    #[test]
    fn percent_encoding_ids_and_files() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;id=%01%02%ff;type=private;slot-id=3?module-path=/m.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("My Token"));
        assert_eq!(uri.id, Some(vec![1, 2, 0xff]));
        assert_eq!(uri.slot_id, Some(3));
        assert_eq!(uri.pin_source, Some(PinSource::File("/run/pin".into())));
        assert_eq!(uri.key_description(), "token=My Token;id=0102ff");
    }

    #[test]
    fn refusals_name_the_attribute() {
        for (uri, expected) in [
            ("pkcs11:object=k?module-path=/m.so&pin-value=1234", "pin-value"),
            ("pkcs11:object=k;colour=red?module-path=/m.so", "colour"),
            ("pkcs11:object=k;object=j?module-path=/m.so", "twice"),
            ("pkcs11:token=t?module-path=/m.so", "object=LABEL"),
            ("pkcs11:object=k", "module-path"),
            ("pkcs11:object=k;type=public?module-path=/m.so", "type=public"),
            ("pkcs11:object=k?module-path=/m.so&pin-source=1234", "pin-source"),
            ("pkcs11:object=k;slot-id=x?module-path=/m.so", "slot-id"),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err();
            assert!(err.contains(expected), "{uri}: {err}");
        }
    }
}
