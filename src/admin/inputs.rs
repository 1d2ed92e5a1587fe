//! Parsing operator input: serials, serials files, stdin import lines, certificate files.
//!
//! Everything here runs before any write. Each error names its source: the file (and
//! certificate number), or the line number for serials files and stdin.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::AdminError;
use crate::serial::Serial;
pub use crate::status::import::ImportRow;
use crate::status::revoke::first_of_each;
pub use crate::status::Origin;
use crate::x509::{load_pem_or_der, parse_cert};

/// Parses a serial typed by the operator; the error names the input and the source.
pub fn parse_serial(input: &str, origin: &Origin) -> Result<Serial, AdminError> {
    Serial::from_hex(input).map_err(|e| AdminError::input(format!("{origin}: bad serial {input:?}: {e}")))
}

/// Parses `--at`: RFC 3339, not in the future (by this host's clock).
pub fn parse_at(input: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, AdminError> {
    let Some(input) = input else { return Ok(now) };
    let at = DateTime::parse_from_rfc3339(input.trim())
        .map_err(|e| {
            AdminError::input(format!("--at {input:?} is not an RFC 3339 time (like 2026-01-31T12:00:00Z): {e}"))
        })?
        .with_timezone(&Utc);
    if at > now {
        return Err(AdminError::input(format!(
            "--at {input:?} is in the future; a revocation time is when it happened"
        )));
    }
    Ok(at)
}

/// Reads `path` as lines; `-` is stdin. The name used in messages is returned too.
fn read_lines(path: &Path) -> Result<(String, Vec<String>), AdminError> {
    if path.as_os_str() == "-" {
        let stdin = std::io::stdin();
        let mut lines = Vec::new();
        for (i, line) in stdin.lock().lines().enumerate() {
            let line = line.map_err(|e| AdminError::input(format!("stdin line {}: cannot read: {e}", i + 1)))?;
            lines.push(line);
        }
        Ok(("stdin".to_owned(), lines))
    } else {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| AdminError::input(format!("cannot read {name}: {e}")))?;
        let text = String::from_utf8(text).map_err(|e| AdminError::input(format!("{name}: not UTF-8 text: {e}")))?;
        Ok((name, text.lines().map(str::to_owned).collect()))
    }
}

/// True for lines that carry nothing: blank, or a `#` comment.
fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Reads a serials file: one hex serial per line (colons allowed), blank lines and `#`
/// comments ignored, duplicates dropped (first occurrence kept). `-` reads stdin.
pub fn read_serials_file(path: &Path) -> Result<Vec<(Serial, Origin)>, AdminError> {
    let (name, lines) = read_lines(path)?;
    let source: Arc<str> = Arc::from(name.as_str());
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if is_blank(line) {
            continue;
        }
        let origin = Origin::Line { source: source.clone(), line: i + 1 };
        out.push((parse_serial(line, &origin)?, origin));
    }
    let out = first_of_each(out);
    if out.is_empty() {
        return Err(AdminError::input(format!("{name} contains no serial")));
    }
    Ok(out)
}

/// Parses the stdin import form: `SERIALHEX,NOTAFTER_RFC3339` per line; blank lines and `#`
/// comments are ignored.
pub fn parse_import_lines(source: &str, lines: &[String]) -> Result<Vec<ImportRow>, AdminError> {
    let source: Arc<str> = Arc::from(source);
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if is_blank(line) {
            continue;
        }
        let origin = Origin::Line { source: source.clone(), line: i + 1 };
        let Some((serial, not_after)) = line.split_once(',') else {
            return Err(AdminError::input(format!("{origin}: expected SERIALHEX,NOTAFTER_RFC3339, got {line:?}")));
        };
        let serial = parse_serial(serial, &origin)?;
        let not_after = DateTime::parse_from_rfc3339(not_after.trim())
            .map_err(|e| {
                AdminError::input(format!(
                    "{origin}: bad notAfter {:?} (expected RFC 3339, like 2026-01-31T12:00:00Z): {e}",
                    not_after.trim()
                ))
            })?
            .with_timezone(&Utc);
        rows.push(ImportRow { serial, not_after, origin });
    }
    Ok(rows)
}

/// Reads the stdin import form from stdin.
pub fn read_import_stdin() -> Result<Vec<ImportRow>, AdminError> {
    let (name, lines) = read_lines(Path::new("-"))?;
    parse_import_lines(&name, &lines)
}

/// A certificate read from a file, with what the admin commands need of it.
pub struct CertInfo {
    pub serial: Serial,
    pub not_after: DateTime<Utc>,
    pub origin: Origin,
}

/// Reads every certificate in `path` and checks each was issued by the CA whose
/// certificate is `issuer_der` (issuer Name equals the CA's subject Name, compared as DER).
pub fn read_cert_file(path: &PathBuf, issuer_name: &str, issuer_der: &[u8]) -> Result<Vec<CertInfo>, AdminError> {
    let ders = load_pem_or_der(path)?;
    let ca = parse_cert(issuer_der, "the issuer's stored certificate")?;
    let file = path.display().to_string();
    let mut out = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let origin = Origin::Cert { file: file.clone(), index: i + 1 };
        let cert = parse_cert(der, &origin.to_string())?;
        let serial = Serial::from_signed_be(cert.tbs_certificate.raw_serial())
            .map_err(|e| AdminError::input(format!("{origin}: unusable serial: {e}")))?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(AdminError::input(format!(
                "{origin} (serial {serial}) was not issued by issuer {issuer_name:?}: \
                 its issuer is \"{}\", the issuer's subject is \"{}\"",
                cert.issuer(),
                ca.subject()
            )));
        }
        let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .ok_or_else(|| AdminError::input(format!("{origin}: notAfter out of range")))?;
        out.push(CertInfo { serial, not_after, origin });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn import_lines_parse_and_name_bad_lines() {
        let rows = parse_import_lines(
            "stdin",
            &lines("# header\n0a:bc,2030-01-01T00:00:00Z\n\nFF01 , 2030-01-01T01:00:00+01:00\n"),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].serial.to_hex(), "0abc");
        assert_eq!(rows[1].serial.to_hex(), "ff01");
        assert_eq!(rows[1].not_after, rows[0].not_after);
        assert_eq!(rows[1].origin, Origin::Line { source: "stdin".into(), line: 4 });

        let e = parse_import_lines("stdin", &lines("01,2030-01-01T00:00:00Z\nxyz,2030-01-01T00:00:00Z"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stdin line 2") && e.contains("xyz"), "{e}");
        let e = parse_import_lines("stdin", &lines("01,tomorrow")).unwrap_err().to_string();
        assert!(e.contains("stdin line 1") && e.contains("tomorrow"), "{e}");
        let e = parse_import_lines("stdin", &lines("01")).unwrap_err().to_string();
        assert!(e.contains("stdin line 1"), "{e}");
        assert_eq!(parse_import_lines("stdin", &lines("01,tomorrow")).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn at_is_checked() {
        let now = Utc::now();
        assert_eq!(parse_at(None, now).unwrap(), now);
        assert!(parse_at(Some("2020-01-01T00:00:00Z"), now).is_ok());
        let e = parse_at(Some("2999-01-01T00:00:00Z"), now).unwrap_err().to_string();
        assert!(e.contains("future"), "{e}");
        let e = parse_at(Some("yesterday"), now).unwrap_err().to_string();
        assert!(e.contains("yesterday"), "{e}");
    }

    #[test]
    fn serials_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serials.txt");
        std::fs::write(&f, "01\n# c\n\n0a:0B\n01\nnope\n").unwrap();
        let e = read_serials_file(&f).unwrap_err().to_string();
        assert!(e.contains("serials.txt line 6") && e.contains("nope"), "{e}");
        std::fs::write(&f, "01\n# c\n\n0a:0B\n01\n").unwrap();
        let s = read_serials_file(&f).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].0.to_hex(), "0a0b");
        let e = read_serials_file(&dir.path().join("absent")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("absent"));
    }
}
