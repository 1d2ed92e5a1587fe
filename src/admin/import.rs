//! `admin import`: bulk-load issued certificates as status good (see
//! [`crate::status::import`] for what an import does).
//!
//! All input is parsed first (every file, every stdin line); any error exits 2 before
//! anything is written.

use super::inputs::{read_cert_file, read_import_stdin, ImportRow};
use super::listing::say;
use super::progress::Reporter;
use super::{actor, connect, find_issuer, AdminError, ImportArgs};
use crate::config::Config;
use crate::status::import::{import, ImportPlan};

pub async fn run(args: ImportArgs, config: &Config) -> Result<(), AdminError> {
    let stdin_count = args.files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_count > 1 {
        return Err(AdminError::input("'-' (stdin) may be given only once"));
    }
    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;

    let mut rows: Vec<ImportRow> = Vec::new();
    let mut sources = Vec::new();
    for path in &args.files {
        if path.as_os_str() == "-" {
            let parsed = tokio::task::spawn_blocking(read_import_stdin)
                .await
                .map_err(|e| AdminError::Operational(format!("reading stdin: {e}")))??;
            rows.extend(parsed);
            sources.push("stdin".to_owned());
        } else {
            for cert in read_cert_file(path, &issuer.name, &issuer.cert_der)? {
                rows.push(ImportRow { serial: cert.serial, not_after: cert.not_after, origin: cert.origin });
            }
            sources.push(path.display().to_string());
        }
    }
    let plan = ImportPlan::new(issuer, rows, sources, actor())?;
    let mut progress = Reporter::new("import");
    let done = import(&mut client, &plan, &mut progress).await;
    progress.finish();
    let done = done?;
    if let Some(e) = &done.analyze_failed {
        eprintln!("warning: ANALYZE certificates after the import failed: {e}");
    }
    say!(
        "imported into issuer {:?}: {} certificates read, {} inserted, {} already present ({:.1}s)",
        plan.issuer.name,
        done.given,
        done.inserted,
        done.already_present,
        done.elapsed.as_secs_f64()
    );
    if done.given > done.certificates {
        say!("{} duplicate lines in the input were ignored", done.given - done.certificates);
    }
    if done.not_after_differs > 0 {
        eprintln!(
            "warning: {} already-present certificates have a different notAfter in the \
             database; they were left unchanged",
            done.not_after_differs
        );
    }
    Ok(())
}
