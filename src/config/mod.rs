//! Configuration: a TOML file, overridden by environment variables, then validated.
//!
//! Sources, lowest precedence first:
//! 1. built-in defaults (the values in `deploy/jitocsp.toml.example`);
//! 2. the TOML file: `--config PATH` (must exist), else `jitocsp.toml` in the working
//!    directory if there is one;
//! 3. `DATABASE_URL` and `REDIS_URL` (ignored when empty);
//! 4. `JITOCSP_<SECTION>_<KEY>`, e.g. `JITOCSP_RESPONSES_VALIDITY=72h`,
//!    `JITOCSP_REDIS_NODES=10.0.0.1:6379,10.0.0.2:6379` (lists are comma-separated).
//!
//! The sections are serde structs (`sections.rs`); the file and the environment are merged
//! into one TOML table first, remembering where each key came from, so that every error
//! names the key and its origin. The set of keys, and the type an environment value is read
//! as, come from the serialized defaults: a key exists once, in its section struct.
//!
//! Unknown sections and keys in the file, and `JITOCSP_<SECTION>_*` variables that name no key
//! of a known section, are errors. Other `JITOCSP_*` variables (`JITOCSP_PKCS11_PIN`,
//! `JITOCSP_TEST_*`, ...) are left alone.
//!
//! Secrets never come from the command line: passwords go into `DATABASE_URL`/`REDIS_URL`
//! (environment), or into a file named by `database.password_file` / `redis.password_file`
//! whose trimmed contents are inserted into the URLs at load time (`secrets.rs`). `Debug`
//! output and error messages never show a password (see [`redact_url`]).

mod secrets;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use secrets::redact_url;
pub use sections::{
    CacheConfig, CdnConfig, DatabaseConfig, LogConfig, LogFormat, NoncePolicy, RedisConfig, ResponsesConfig,
    ServerConfig, SigningConfig, UnissuedPolicy,
};
pub use validate::{max_refresh_after, MAX_VALIDITY, MIN_VALIDITY};

/// The name of the config file looked for in the working directory when no path is given.
pub const DEFAULT_FILE: &str = "jitocsp.toml";

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "JITOCSP_";

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub responses: ResponsesConfig,
    pub signing: SigningConfig,
    pub log: LogConfig,
    pub cdn: CdnConfig,
}

/// Why the configuration could not be loaded. Every message names the file or environment
/// variable and the key; none contains a password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("config file {}: invalid TOML{location}: {message}", path.display())]
    Syntax { path: PathBuf, location: String, message: String },

    #[error("config file {}: unknown section [{section}] (known sections: {known})", path.display())]
    UnknownSection { path: PathBuf, section: String, known: String },

    #[error("config file {}: `{section}` must be a section ([{section}]), not a {found}", path.display())]
    NotASection { path: PathBuf, section: String, found: String },

    #[error("config file {}: unknown key `{key}` in section [{section}] (known keys: {known})", path.display())]
    UnknownKey { path: PathBuf, section: String, key: String, known: String },

    #[error(
        "environment variable {var}: section [{section}] has no key `{key}` \
         (known keys: {known}; variables are JITOCSP_<SECTION>_<KEY>)"
    )]
    UnknownEnv { var: String, section: String, key: String, known: String },

    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: String },

    #[error("{key} (set by {origin}): {message}")]
    Invalid { key: String, origin: String, message: String },

    #[error("{key} (set by {origin}): {source}")]
    PasswordFile {
        key: String,
        origin: String,
        #[source]
        source: crate::secret_file::SecretFileError,
    },
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(name) => write!(f, "command-line flag {name}"),
        }
    }
}

/// The origin of every key set by the file or the environment, by "section.key".
#[derive(Default)]
struct Origins(BTreeMap<String, Origin>);

impl Origins {
    fn of(&self, key: &str) -> &Origin {
        self.0.get(key).unwrap_or(&Origin::Default)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: key.to_string(), origin: self.of(key).to_string(), message: message.into() }
    }
}

/// A command-line flag that sets a configuration key (a string), over the file and the
/// environment, and is validated with them: a bad value names the flag and exits 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub section: &'static str,
    pub key: &'static str,
    /// The flag as the user typed it (`--listen`), for error messages.
    pub name: &'static str,
    pub value: String,
}

/// The file and environment values merged, as one TOML table of sections.
#[derive(Default)]
struct Layers {
    table: toml::Table,
    origins: Origins,
}

impl Layers {
    fn set(&mut self, section: &str, key: &str, value: toml::Value, origin: Origin) {
        let entry = self.table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_string(), value);
        }
        self.origins.0.insert(format!("{section}.{key}"), origin);
    }
}

/// The defaults as a table of sections: the list of keys, and each key's TOML type.
fn schema() -> toml::Table {
    // Serializing the built-in defaults cannot fail: every field is a string, number, list
    // or duration string.
    toml::Table::try_from(Config::default()).expect("the default configuration serializes")
}

fn section_keys<'a>(schema: &'a toml::Table, section: &str) -> Option<&'a toml::Table> {
    schema.get(section).and_then(toml::Value::as_table)
}

fn joined<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

impl Config {
    /// Loads the configuration: the file at `path` (which must exist), else `jitocsp.toml` in
    /// the working directory if present, else the defaults; then the process environment's
    /// overrides; then the command line's `flags`; then validates.
    pub fn load(path: Option<&Path>, flags: &[Flag]) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(ENV_PREFIX) || name == "DATABASE_URL" || name == "REDIS_URL") {
                continue;
            }
            match value.into_string() {
                Ok(value) => env.push((name.to_string(), value)),
                Err(_) => return Err(ConfigError::EnvNotUnicode { var: name.to_string() }),
            }
        }
        Self::load_from(path, env, flags)
    }

    /// [`Config::load`] with an explicit environment.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[Flag],
    ) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                p.is_file().then_some(p)
            }
        };
        Self::load_layers(file.as_deref(), env, flags)
    }

    /// Loads `file` (if any) and `env`; never looks at the working directory.
    #[cfg(test)]
    fn load_inner(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        Self::load_layers(file, env, &[])
    }

    /// Loads `file` (if any), `env` and `flags`; never looks at the working directory.
    fn load_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[Flag],
    ) -> Result<Config, ConfigError> {
        let schema = schema();
        let mut layers = Layers::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            read_file(&mut layers, &schema, path, &text)?;
        }
        read_env(&mut layers, &schema, env)?;
        for flag in flags {
            layers.set(flag.section, flag.key, toml::Value::String(flag.value.clone()), Origin::Flag(flag.name));
        }
        let mut config = deserialize(&layers, &schema)?;
        config.cdn.base_url = config.cdn.base_url.trim_end_matches('/').to_owned();
        secrets::apply(&mut config, &layers.origins)?;
        validate::validate(&config, &layers.origins)?;
        Ok(config)
    }
}

/// Deserializes the merged table. serde's error does not say which key failed, so on error
/// each key set is tried alone on top of the defaults, to name it and where it was set.
fn deserialize(layers: &Layers, schema: &toml::Table) -> Result<Config, ConfigError> {
    let whole = match layers.table.clone().try_into::<Config>() {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    for (section, keys) in &layers.table {
        for (key, value) in keys.as_table().into_iter().flatten() {
            let mut one = schema.clone();
            if let Some(toml::Value::Table(t)) = one.get_mut(section) {
                t.insert(key.clone(), value.clone());
            }
            if let Err(e) = one.try_into::<Config>() {
                return Err(layers.origins.invalid(&format!("{section}.{key}"), e.message().trim()));
            }
        }
    }
    Err(ConfigError::Invalid {
        key: "configuration".into(),
        origin: "the file and environment together".into(),
        message: whole.message().trim().to_string(),
    })
}

fn read_file(layers: &mut Layers, schema: &toml::Table, path: &Path, text: &str) -> Result<(), ConfigError> {
    // Parse into a plain table first: the error text of a typed deserializer quotes the
    // offending line, which could hold a password.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let location = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError::Syntax { path: path.to_path_buf(), location, message: e.message().trim().to_string() }
    })?;
    for (section, value) in table {
        let Some(known) = section_keys(schema, &section) else {
            return Err(ConfigError::UnknownSection { path: path.into(), section, known: joined(schema.keys()) });
        };
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::NotASection { path: path.into(), found: value.type_str().into(), section });
        };
        for (key, value) in entries {
            if !known.contains_key(&key) {
                return Err(ConfigError::UnknownKey { path: path.into(), known: joined(known.keys()), section, key });
            }
            layers.set(&section, &key, value, Origin::File(path.into()));
        }
    }
    Ok(())
}

fn read_env(
    layers: &mut Layers,
    schema: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut specific = Vec::new();
    let mut generic = Vec::new();
    for (name, value) in env {
        match name.as_str() {
            "DATABASE_URL" | "REDIS_URL" if !value.is_empty() => generic.push((name, value)),
            _ if name.starts_with(ENV_PREFIX) => specific.push((name, value)),
            _ => {}
        }
    }
    // DATABASE_URL / REDIS_URL first, so JITOCSP_DATABASE_URL / JITOCSP_REDIS_URL win.
    for (name, value) in generic {
        let section = if name == "DATABASE_URL" { "database" } else { "redis" };
        layers.set(section, "url", toml::Value::String(value), Origin::Env(name));
    }
    for (name, value) in specific {
        let rest = &name[ENV_PREFIX.len()..];
        let found = schema.iter().find_map(|(section, keys)| {
            let key = rest.strip_prefix(section.to_ascii_uppercase().as_str())?.strip_prefix('_')?;
            Some((section, keys.as_table()?, key))
        });
        let Some((section, keys, key_part)) = found else {
            continue; // not ours: JITOCSP_PKCS11_PIN, JITOCSP_TEST_*, ...
        };
        let Some((key, default)) = keys.iter().find(|(k, _)| k.to_ascii_uppercase() == key_part) else {
            return Err(ConfigError::UnknownEnv {
                key: key_part.to_ascii_lowercase(),
                section: section.clone(),
                known: joined(keys.keys()),
                var: name,
            });
        };
        // The environment has only strings: read each as the type of the key's default.
        let invalid = |message: String| ConfigError::Invalid {
            key: format!("{section}.{key}"),
            origin: Origin::Env(name.clone()).to_string(),
            message,
        };
        let value = match default {
            toml::Value::Integer(_) => toml::Value::Integer(
                value.trim().parse().map_err(|_| invalid(format!("{value:?} is not a non-negative integer")))?,
            ),
            toml::Value::Float(_) => {
                toml::Value::Float(value.trim().parse().map_err(|_| invalid(format!("{value:?} is not a number")))?)
            }
            toml::Value::Array(_) => toml::Value::Array(
                value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.to_string().into()).collect(),
            ),
            _ => toml::Value::String(value),
        };
        let (section, key) = (section.clone(), key.clone());
        layers.set(&section, &key, value, Origin::Env(name));
    }
    Ok(())
}
