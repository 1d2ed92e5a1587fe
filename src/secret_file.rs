//! Reading secrets from files: signer keys, PKCS#11 PIN files, database and Redis password
//! files.
//!
//! A secret file that anyone but its owner may read or write is refused, as ssh refuses such
//! a private key: on a shared host a mode of 0644 hands the CA's signing key (or the PIN that
//! unlocks it) to every local account, and a writable one lets them swap it. The check is
//! made on the opened file (not on the path before opening it), so the file read is the file
//! checked. The message names the file, its mode and the fix; it never shows the contents.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Permission bits a secret file must not have: any access by group or others.
const GROUP_OR_OTHERS: u32 = 0o077;

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is accessible by group or others (mode {mode:04o}); a secret file must be readable by \
         its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{} is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
}

/// Reads a secret file whose mode gives nothing to group or others.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let unreadable = |source| SecretFileError::Unreadable { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(unreadable)?;
    let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o7777;
    if mode & GROUP_OR_OTHERS != 0 {
        return Err(SecretFileError::TooOpen { path: path.to_path_buf(), mode });
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(unreadable)?;
    Ok(contents)
}

/// The error with its cause, on one line ("cannot read /x: No such file or directory"),
/// for callers whose errors are plain text.
pub fn error_chain(error: &SecretFileError) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// As [`read`], for a text secret (a password or a PIN).
pub fn read_to_string(path: &Path) -> Result<String, SecretFileError> {
    String::from_utf8(read(path)?).map_err(|_| SecretFileError::NotUtf8 { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn secret_with_mode(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn owner_only_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700] {
            assert_eq!(read_to_string(&secret_with_mode(dir.path(), mode)).unwrap(), "s3cret\n");
        }
    }

    #[test]
    fn files_open_to_group_or_others_are_refused_without_showing_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
            let path = secret_with_mode(dir.path(), mode);
            let error = read(&path).unwrap_err();
            assert!(matches!(error, SecretFileError::TooOpen { mode: m, .. } if m == mode), "{mode:o}: {error}");
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = read(Path::new("/nonexistent/pin")).unwrap_err();
        assert!(matches!(error, SecretFileError::Unreadable { .. }));
        assert!(error.to_string().contains("/nonexistent/pin"));
    }
}
