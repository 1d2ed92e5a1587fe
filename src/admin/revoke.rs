//! `admin revoke` and `admin unrevoke`: parse, build the plan, let [`crate::status`] carry it
//! out (the transaction rules are documented there), print the outcome.
//!
//! What committed is printed as soon as it committed, before the purges it owes are
//! attempted, so that an operator who interrupts a slow purge still knows the change is in.

use chrono::Utc;
use tokio_postgres::Client;

use super::inputs::{parse_at, parse_serial, read_cert_file, read_serials_file, Origin};
use super::listing::{say, Listing};
use super::progress::Reporter;
use super::purge::report;
use super::{actor, connect, find_issuer, AdminError, CertArgs, RevokeArgs};
use crate::cache::CacheError;
use crate::config::Config;
use crate::ocsp::RevocationReason;
use crate::purge::pending::{PurgeOutcome, SettleWarning};
use crate::serial::Serial;
use crate::status::revoke::{Committed, Preview, RevokePlan, Revoked, Verdict};
use crate::status::unrevoke::UnrevokePlan;
use crate::status::{self, rfc3339, AfterCommit, CdnOutcome};

pub async fn revoke(args: RevokeArgs, config: &Config) -> Result<(), AdminError> {
    // Validate everything that needs no database.
    let reason = RevocationReason::parse(&args.reason).map_err(AdminError::Input)?;
    let at = parse_at(args.at.as_deref(), Utc::now())?;
    let mut serials: Vec<(Serial, Origin)> = match (&args.serial, &args.serials_file, &args.cert_file) {
        (Some(s), None, None) => vec![(parse_serial(s, &Origin::Argument)?, Origin::Argument)],
        (None, Some(f), None) => read_serials_file(f)?,
        (None, None, Some(_)) => Vec::new(),
        _ => return Err(AdminError::input("give exactly one of --serial, --serials-file, --cert-file")),
    };

    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    if let Some(path) = &args.cert_file {
        let certs = read_cert_file(path, &issuer.name, &issuer.cert_der)?;
        serials.extend(certs.into_iter().map(|c| (c.serial, c.origin)));
    }
    let mut plan = RevokePlan::new(issuer, serials, reason, at, args.at.is_some(), args.dry_run, actor());
    if let Some(batch_size) = args.batch_size {
        plan.batch_size = batch_size;
    }
    let mut progress = Reporter::new("revoke");
    if plan.dry_run {
        let preview = status::revoke::preview(&client, &plan, &mut progress).await?;
        progress.finish();
        return print_preview(&plan, preview);
    }

    let mut second = connect(config).await?;
    let bar = progress.bar();
    let mut owed = Owed::default();
    let outcome = {
        let mut on_commit = |committed: Committed| {
            // Printed as soon as it committed, before later batches and the final purges.
            Reporter::suspend_for(bar.as_ref(), || print_committed(&plan, &committed.batch));
            owed.add(committed);
        };
        let work = status::revoke::revoke([&mut client, &mut second], config, &plan, &mut progress, &mut on_commit);
        tokio::select! {
            outcome = work => outcome.map(Some),
            // Dropping `work` rolls back the transactions in flight (unless already committing).
            Ok(()) = tokio::signal::ctrl_c() => Ok(None),
        }
    };
    progress.finish();
    let done = owed.done;
    owed.settle(config, &client).await;
    let summary = match outcome {
        Ok(Some(summary)) => summary,
        Ok(None) => {
            return Err(AdminError::Operational(format!(
                "interrupted after {} of {} certificates (printed above; a batch in flight was rolled back or \
                 committed); running the same command again finishes the rest, skipping the certificates already revoked",
                done,
                plan.serials.len()
            )))
        }
        Err(error) => return Err(error.into()),
    };
    let rekeyed = match summary.reason_changed {
        0 => String::new(),
        n => format!("{n} changed to keyCompromise, "),
    };
    say!(
        "{} revoked, {rekeyed}{} already revoked (issuer {:?}, reason {reason})",
        summary.revoked,
        summary.unchanged,
        plan.issuer.name
    );
    Ok(())
}

/// What the committed batches still owe, gathered as they commit: the outcome of their Redis
/// purges, and their CDN purges (the hook is called once, at the end).
#[derive(Default)]
struct Owed {
    /// Certificates of the committed batches.
    done: usize,
    purged: usize,
    pending: usize,
    error: Option<CacheError>,
    warnings: Vec<SettleWarning>,
    cdn_ids: Vec<i64>,
}

impl Owed {
    fn add(&mut self, committed: Committed) {
        let Committed { batch, purge } = committed;
        self.done += batch.len();
        match purge {
            Some((PurgeOutcome::Done { purged }, warnings)) => {
                self.purged += purged;
                self.warnings.extend(warnings);
            }
            Some((PurgeOutcome::Failed { purged, pending, error }, warnings)) => {
                self.purged += purged;
                self.pending += pending;
                self.error.get_or_insert(error);
                self.warnings.extend(warnings);
            }
            None => self.pending += batch.after_commit.targets.len(),
        }
        self.cdn_ids.extend(batch.after_commit.cdn_ids);
    }

    /// Tells the operator how the purges went, and calls the CDN hook. Nothing here can fail
    /// the command: what was not purged stays owed and running responders retry it.
    async fn settle(self, config: &Config, client: &Client) {
        let Owed { purged, pending, error, warnings, cdn_ids, .. } = self;
        match error {
            Some(error) => report(&(PurgeOutcome::Failed { purged, pending, error }, warnings)),
            None => {
                report(&(PurgeOutcome::Done { purged }, warnings));
                if pending > 0 {
                    // Interrupted between a commit and its purge.
                    eprintln!(
                        "warning: the cached responses of {pending} certificate(s) are still to be purged \
                         (table pending_purge_batches); running responders retry it, `jitocsp admin purge` does it now"
                    );
                }
            }
        }
        let owed = AfterCommit { targets: Vec::new(), cdn_ids };
        report_cdn(owed.deliver_cdn(config, client).await);
    }
}

fn print_preview(plan: &RevokePlan, preview: Preview) -> Result<(), AdminError> {
    let mut would = 0;
    let mut out = Listing::new();
    for (serial, verdict) in &preview.verdicts {
        match verdict {
            Verdict::ChangeReason { revoked_at } => {
                would += 1;
                out.line(format_args!(
                    "would change the reason of {serial} to keyCompromise (revoked at {})",
                    rfc3339(*revoked_at)
                ));
            }
            Verdict::Revoke => {
                would += 1;
                out.line(format_args!(
                    "would revoke {serial}: good -> revoked ({}, at {})",
                    plan.reason,
                    rfc3339(plan.at)
                ));
            }
            Verdict::AlreadyRevoked(state) => out.line(format_args!(
                "already revoked {serial}: {} at {} (would be left unchanged)",
                state.reason.map(RevocationReason::describe_code).unwrap_or_default(),
                state.revoked_at.map(rfc3339).unwrap_or_default()
            )),
        }
    }
    if let Some(refused) = preview.refused {
        return Err(refused.into());
    }
    out.line(format_args!(
        "dry run: would revoke or re-reason {would}, {} left as they are (issuer {:?}); nothing was changed",
        plan.serials.len() - would,
        plan.issuer.name
    ));
    out.finish().map_err(AdminError::Output)
}

fn print_committed(plan: &RevokePlan, revoked: &Revoked) {
    let mut out = Listing::new();
    for serial in &revoked.revoked {
        out.line(format_args!("revoked {serial} ({}, at {})", plan.reason, rfc3339(plan.at)));
    }
    for (serial, new_at) in &revoked.reason_changed {
        out.line(format_args!("changed the reason of {serial} to keyCompromise (revoked at {})", rfc3339(*new_at)));
    }
    for (serial, state) in &revoked.unchanged {
        out.line(format_args!(
            "already revoked {serial}: {} at {}; left unchanged",
            state.reason.map(RevocationReason::describe_code).unwrap_or_default(),
            state.revoked_at.map(rfc3339).unwrap_or_default()
        ));
    }
    // A stdout that cannot be written loses the listing, not the revocation.
    let _ = out.finish();
}

/// Purges what the change made wrong and tells the operator how it went. Nothing here can
/// fail the command: what was not purged stays owed and running responders retry it.
async fn after_commit(config: &Config, client: &Client, owed: &AfterCommit) {
    report(&owed.purge(config, client).await);
    report_cdn(owed.deliver_cdn(config, client).await);
}

fn report_cdn(outcome: CdnOutcome) {
    match outcome {
        CdnOutcome::NotOwed => {}
        CdnOutcome::Queued(n) => say!("CDN purge: {n} purges queued; running responders deliver them"),
        CdnOutcome::Called { owed, delivery: d } if d.failed == 0 && d.done == owed => {
            say!("CDN purge: done ({} certificate(s))", d.done)
        }
        CdnOutcome::Called { owed, delivery: d } => {
            let left = owed - d.done;
            let error = d.error.map(|e| format!(" ({e})")).unwrap_or_default();
            eprintln!(
                "warning: CDN purge: {} done, {left} pending{error}; running responders retry until the hook succeeds",
                d.done
            );
        }
        CdnOutcome::Failed(e) => eprintln!(
            "warning: CDN purge: could not deliver now ({e}); the purges are recorded and running responders retry them"
        ),
    }
}

pub async fn unrevoke(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    let plan = UnrevokePlan { issuer, serial, actor: actor() };
    let unrevoked = status::unrevoke::unrevoke(&mut client, &config.cdn, &plan).await?;
    say!("unrevoked {} (issuer {:?}): certificateHold released, status good", plan.serial, plan.issuer.name);
    after_commit(config, &client, &unrevoked.after_commit).await;
    Ok(())
}
