//! `jitocsp admin ...`: the operator's commands. They parse and check the operator's input,
//! build a plan for [`crate::status`] (which makes every status change), and print what it
//! did.
//!
//! Rules every command follows (Boulder's admin-tool lessons, see LESSONS.md):
//! - **Validate everything before writing anything.** Serials, reasons, times and files are
//!   all parsed and checked first; a bad line anywhere means no write at all, and the error
//!   names the file and line (or the serial) that was wrong.
//! - **One transaction per command, or per batch.** A revocation changes `certificates`,
//!   writes one `audit_log` row per changed certificate and one `pending_purge_batches` row, and
//!   queues `NOTIFY jitocsp_status` (many changes per notification), all in one transaction:
//!   either all of it happened or none did, and responders hear of it only if it committed.
//!   A revocation of more than `--batch-size` certificates is cut into such transactions,
//!   after every serial was checked; one that stops half way is finished by running it again
//!   (see [`crate::status`]).
//! - **Progress on stderr.** Long commands (import, revoke) show a progress bar on a terminal
//!   and a plain line per step otherwise; stdout has what they did, as always.
//! - **Purge after commit.** The Redis keys are deleted only after the commit; when Redis is
//!   unreachable the command still succeeds (the change is in Postgres, responders were
//!   notified) and the `pending_purge_batches` rows stay for the responders to retry.
//! - **Exit status**: 0 success, 1 operational failure (Postgres or Redis down...), 2 bad
//!   input or usage (see [`AdminError::exit_code`]).
//! - **Audit**: every change writes an `audit_log` row naming the actor
//!   (`$JITOCSP_ACTOR`, else `$SUDO_USER`, else `$USER`, else `unknown`), and emits a
//!   `tracing::info!` line with target `jitocsp::audit`.
//!
//! Unlike Boulder's tool, `revoke` is not dry-run by default: the SPEC's command line makes
//! `--dry-run` the opt-in. Exactly one input (`--serial`, `--serials-file`, `--cert-file`) is
//! enforced by clap.

mod import;
mod inputs;
mod issuers;
mod listing;
mod progress;
mod purge;
mod revoke;
mod show;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use tokio_postgres::Client;

use crate::config::Config;
use crate::db::PgError;
use crate::status::{IssuerRow, StatusError};
use crate::x509::CertificateError;

/// `jitocsp admin <command>`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Register an issuing CA, or list them.
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// Load issued certificates (status good) from PEM/DER files, or from stdin ('-') as one
    /// 'SERIALHEX,NOTAFTER_RFC3339' per line. Re-importing is harmless.
    Import(ImportArgs),
    /// Revoke certificates: exactly one of --serial, --serials-file, --cert-file.
    Revoke(RevokeArgs),
    /// Undo a revocation whose reason is certificateHold (and only that).
    Unrevoke(CertArgs),
    /// Print a certificate's status, reason, times, and which cached responses exist.
    Status(CertArgs),
    /// Delete a certificate's cached responses, and retry every pending purge.
    Purge(CertArgs),
    /// List the audit log, newest last.
    Audit(AuditArgs),
}

/// `jitocsp admin issuer ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum IssuerCommand {
    /// Register an issuing CA: its certificate and the signer of its OCSP responses.
    Add(IssuerAddArgs),
    /// List the registered issuers.
    List,
    /// Replace an issuer's signer, and its delegated responder certificate (or go back to
    /// the CA signing its own responses). Running responders switch within seconds.
    SetSigner(IssuerSetSignerArgs),
    /// Stop serving an issuer: its certificates are answered unauthorized by every running
    /// responder within seconds. Final; its rows and audit trail stay.
    Retire(IssuerRetireArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IssuerSetSignerArgs {
    /// The issuer's name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// `file:PATH` (PKCS#8 or SEC1 PEM key) or an RFC 7512 `pkcs11:` URI.
    #[arg(long, value_name = "SIGNER")]
    pub signer: String,
    /// Delegated OCSP responder certificate (id-kp-OCSPSigning) whose key the signer holds;
    /// without it, the signer must hold the CA's key.
    #[arg(long, value_name = "PEM")]
    pub responder_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IssuerRetireArgs {
    /// The issuer's name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct IssuerAddArgs {
    /// Unique name operators use for this issuer.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The issuer's CA certificate (PEM or DER).
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// `file:PATH` (PKCS#8 or SEC1 PEM key) or an RFC 7512 `pkcs11:` URI.
    #[arg(long, value_name = "SIGNER")]
    pub signer: String,
    /// Delegated OCSP responder certificate (id-kp-OCSPSigning) whose key the signer holds.
    #[arg(long, value_name = "PEM")]
    pub responder_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The issuer the certificates belong to.
    #[arg(long, value_name = "NAME")]
    pub issuer: String,
    /// Certificate files (PEM, any number of certificates each, or DER), or '-' for stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("input")
        .required(true)
        .multiple(false)
        .args(["serial", "serials_file", "cert_file"])
))]
pub struct RevokeArgs {
    /// The issuer of the certificates.
    #[arg(long, value_name = "NAME")]
    pub issuer: String,
    /// One serial, hex, colons allowed.
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// A file with one hex serial per line ('#' comments and blank lines allowed; '-' = stdin).
    #[arg(long, value_name = "F")]
    pub serials_file: Option<PathBuf>,
    /// A PEM/DER file with the certificate(s) to revoke.
    #[arg(long, value_name = "PEM")]
    pub cert_file: Option<PathBuf>,
    /// RFC 5280 reason name: unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
    #[arg(long, value_name = "REASON")]
    pub reason: String,
    /// Revocation time (RFC 3339; default now; not in the future).
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Certificates per transaction (default 20000). Each batch commits on its own, with its
    /// audit rows, purges and notifications; an interrupted revocation is finished by running
    /// it again.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<NonZeroUsize>,
}

/// One certificate: `--issuer NAME --serial HEX`.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    #[arg(long, value_name = "NAME")]
    pub issuer: String,
    #[arg(long, value_name = "HEX")]
    pub serial: String,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// How many of the newest entries to show.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: i64,
    /// Check the whole hash chain instead: exit 0 and print its head if every row is intact,
    /// exit 1 naming the first row that was changed, deleted or reordered.
    #[arg(long, conflicts_with = "limit")]
    pub verify: bool,
}

/// Why an admin command failed. [`AdminError::exit_code`] maps it to the process status.
///
/// The binary prints the error with its chain of causes (the Postgres server's message and
/// detail, the Redis error), so each variant says only what was being done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The operator's input is wrong: bad serial, reason, time, unknown issuer, a file that
    /// is unreadable or not a certificate, a key that does not match.
    #[error("{0}")]
    Input(String),
    /// A certificate file could not be read or parsed.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The status change was refused (bad input) or failed (see [`StatusError::is_input`]).
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Postgres failed.
    #[error("{what}")]
    Database {
        what: String,
        #[source]
        source: PgError,
    },
    /// No connection to Postgres: TLS could not be set up (a file unreadable, a bad
    /// `sslmode`) or the server refused or failed it.
    #[error("cannot connect to Postgres (database.url)")]
    Connect(#[source] crate::db::ConnectError),
    /// Postgres did not answer the connection in time.
    #[error("cannot connect to Postgres (database.url): no answer within {0:?}")]
    ConnectTimeout(Duration),
    /// Redis failed where the command's purpose is the cache (`purge`).
    #[error("{what}")]
    Cache {
        what: String,
        #[source]
        source: crate::cache::CacheError,
    },
    /// Any other operational failure (a signer that cannot be reached, stdin unreadable).
    #[error("{0}")]
    Operational(String),
    /// `audit --verify` found the chain broken, or could not read it.
    #[error("the audit log does not verify")]
    Audit(#[from] crate::audit::VerifyError),
    /// Standard output could not be written (other than a reader that went away, which ends a
    /// listing quietly).
    #[error("cannot write to standard output")]
    Output(#[source] std::io::Error),
}

impl AdminError {
    /// 2 for bad input or usage, 1 for operational failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Input(_) | AdminError::Certificate(_) => 2,
            AdminError::Status(e) if e.is_input() => 2,
            AdminError::Status(_)
            | AdminError::Database { .. }
            | AdminError::Connect(_)
            | AdminError::ConnectTimeout(_)
            | AdminError::Cache { .. }
            | AdminError::Operational(_)
            | AdminError::Audit(_)
            | AdminError::Output(_) => 1,
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        AdminError::Input(message.into())
    }
}

/// Maps a Postgres error to [`AdminError::Database`], saying what was being done.
pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> AdminError {
    let what = what.into();
    move |e| AdminError::Database { what, source: e.into() }
}

/// Who is making the change, for the audit log.
pub fn actor() -> String {
    ["JITOCSP_ACTOR", "SUDO_USER", "USER"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Connects to the primary database, bounded by `database.connect_timeout_ms`.
pub(crate) async fn connect(config: &Config) -> Result<Client, AdminError> {
    let timeout = Duration::from_millis(config.database.connect_timeout_ms.max(1000));
    match tokio::time::timeout(timeout, crate::db::connect(&config.database.url, &config.database.tls_files())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(AdminError::Connect(e)),
        Err(_) => Err(AdminError::ConnectTimeout(timeout)),
    }
}

/// Looks up an issuer by name; an unknown name is bad input.
pub(crate) async fn find_issuer(client: &Client, name: &str) -> Result<IssuerRow, AdminError> {
    match crate::db::issuers::by_name(client, name).await.map_err(db("looking up the issuer"))? {
        Some(issuer) => Ok(issuer),
        None => Err(unknown_issuer(name)),
    }
}

/// The refusal of an issuer name that is not registered.
pub(crate) fn unknown_issuer(name: &str) -> AdminError {
    AdminError::input(format!("unknown issuer {name:?} (`jitocsp admin issuer list` shows the registered issuers)"))
}

/// Runs one admin command.
pub async fn run(cmd: AdminCommand, config: &Config) -> Result<(), AdminError> {
    match cmd {
        AdminCommand::Issuer(IssuerCommand::Add(args)) => issuers::add(args, config).await,
        AdminCommand::Issuer(IssuerCommand::List) => issuers::list(config).await,
        AdminCommand::Issuer(IssuerCommand::SetSigner(args)) => issuers::set_signer(args, config).await,
        AdminCommand::Issuer(IssuerCommand::Retire(args)) => issuers::retire(args, config).await,
        AdminCommand::Import(args) => import::run(args, config).await,
        AdminCommand::Revoke(args) => revoke::revoke(args, config).await,
        AdminCommand::Unrevoke(args) => revoke::unrevoke(args, config).await,
        AdminCommand::Status(args) => show::status(args, config).await,
        AdminCommand::Purge(args) => purge::purge_command(args, config).await,
        AdminCommand::Audit(args) => show::audit(args, config).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AdminCommand,
    }

    fn parse(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.cmd)
    }

    #[test]
    fn revoke_needs_exactly_one_input() {
        let base = ["revoke", "--issuer", "x", "--reason", "keyCompromise"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&[]).is_err());
        assert!(with(&["--serial", "01"]).is_ok());
        assert!(with(&["--serials-file", "f"]).is_ok());
        assert!(with(&["--cert-file", "c.pem"]).is_ok());
        assert!(with(&["--serials-file", "f", "--batch-size", "1000"]).is_ok());
        assert_eq!(with(&["--serials-file", "f", "--batch-size", "0"]).unwrap_err().exit_code(), 2);
        let both = with(&["--serial", "01", "--cert-file", "c.pem"]).unwrap_err();
        assert_eq!(both.exit_code(), 2);
    }

    #[test]
    fn commands_parse() {
        assert!(parse(&["issuer", "add", "--name", "a", "--cert", "c", "--signer", "file:k"]).is_ok());
        assert!(parse(&["issuer", "list"]).is_ok());
        assert!(parse(&["issuer", "set-signer", "--name", "a", "--signer", "file:k"]).is_ok());
        assert!(parse(&["issuer", "set-signer", "--name", "a"]).is_err());
        assert!(parse(&["issuer", "retire", "--name", "a"]).is_ok());
        assert!(parse(&["import", "--issuer", "a", "-"]).is_ok());
        assert!(parse(&["import", "--issuer", "a"]).is_err());
        assert!(parse(&["unrevoke", "--issuer", "a", "--serial", "01"]).is_ok());
        assert!(parse(&["status", "--issuer", "a", "--serial", "01"]).is_ok());
        assert!(parse(&["purge", "--issuer", "a", "--serial", "01"]).is_ok());
        assert!(parse(&["audit", "--limit", "3"]).is_ok());
        assert!(parse(&["audit", "--verify"]).is_ok());
        assert!(parse(&["audit", "--verify", "--limit", "3"]).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(AdminError::input("x").exit_code(), 2);
        assert_eq!(AdminError::Operational("x".into()).exit_code(), 1);
        assert_eq!(AdminError::ConnectTimeout(Duration::from_secs(1)).exit_code(), 1);
        assert_eq!(AdminError::from(StatusError::NothingToImport).exit_code(), 2);
        assert_eq!(AdminError::from(StatusError::RevokedCount { expected: 1, changed: 0 }).exit_code(), 1);
    }
}
