//! `admin revoke` and `admin unrevoke`: parse, build the plan, let [`crate::status`] carry it
//! out (the transaction rules are documented there), print the outcome.
//!
//! What committed is printed as soon as it committed, before the purges it owes are
//! attempted, so that an operator who interrupts a slow purge still knows the change is in.

use chrono::Utc;
use tokio_postgres::Client;

use super::inputs::{parse_at, parse_serial, read_cert_file, read_serials_file, Origin};
use super::purge::report;
use super::{actor, connect, find_issuer, AdminError, CertArgs, RevokeArgs};
use crate::config::Config;
use crate::ocsp::RevocationReason;
use crate::serial::Serial;
use crate::status::revoke::{Preview, RevokeOutcome, RevokePlan, Revoked, Verdict};
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
    let plan = RevokePlan::new(issuer, serials, reason, at, args.at.is_some(), args.dry_run, actor());
    match status::revoke::revoke(&mut client, &config.cdn, &plan).await? {
        RevokeOutcome::DryRun(preview) => print_preview(&plan, preview),
        RevokeOutcome::Committed(revoked) => {
            print_committed(&plan, &revoked);
            after_commit(config, &client, &revoked.after_commit).await;
            let rekeyed = match revoked.reason_changed.len() {
                0 => String::new(),
                n => format!("{n} changed to keyCompromise, "),
            };
            println!(
                "{} revoked, {rekeyed}{} already revoked (issuer {:?}, reason {reason})",
                revoked.revoked.len(),
                revoked.unchanged.len(),
                plan.issuer.name
            );
            Ok(())
        }
    }
}

fn print_preview(plan: &RevokePlan, preview: Preview) -> Result<(), AdminError> {
    let mut would = 0;
    for (serial, verdict) in &preview.verdicts {
        match verdict {
            Verdict::ChangeReason { revoked_at } => {
                would += 1;
                println!("would change the reason of {serial} to keyCompromise (revoked at {})", rfc3339(*revoked_at));
            }
            Verdict::Revoke => {
                would += 1;
                println!("would revoke {serial}: good -> revoked ({}, at {})", plan.reason, rfc3339(plan.at));
            }
            Verdict::AlreadyRevoked(state) => println!(
                "already revoked {serial}: {} at {} (would be left unchanged)",
                state.reason.map(RevocationReason::describe_code).unwrap_or_default(),
                state.revoked_at.map(rfc3339).unwrap_or_default()
            ),
        }
    }
    if let Some(refused) = preview.refused {
        return Err(refused.into());
    }
    println!(
        "dry run: would revoke or re-reason {would}, {} left as they are (issuer {:?}); nothing was changed",
        plan.serials.len() - would,
        plan.issuer.name
    );
    Ok(())
}

fn print_committed(plan: &RevokePlan, revoked: &Revoked) {
    for serial in &revoked.revoked {
        println!("revoked {serial} ({}, at {})", plan.reason, rfc3339(plan.at));
    }
    for (serial, new_at) in &revoked.reason_changed {
        println!("changed the reason of {serial} to keyCompromise (revoked at {})", rfc3339(*new_at));
    }
    for (serial, state) in &revoked.unchanged {
        println!(
            "already revoked {serial}: {} at {}; left unchanged",
            state.reason.map(RevocationReason::describe_code).unwrap_or_default(),
            state.revoked_at.map(rfc3339).unwrap_or_default()
        );
    }
}

/// Purges what the change made wrong and tells the operator how it went. Nothing here can
/// fail the command: what was not purged stays owed and running responders retry it.
async fn after_commit(config: &Config, client: &Client, owed: &AfterCommit) {
    report(&owed.purge(config, client).await);
    match owed.deliver_cdn(config, client).await {
        CdnOutcome::NotOwed => {}
        CdnOutcome::Queued(n) => println!("CDN purge: {n} purges queued; running responders deliver them"),
        CdnOutcome::Called { owed, delivery: d } if d.failed == 0 && d.done == owed => {
            println!("CDN purge: done ({} certificate(s))", d.done)
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
    println!("unrevoked {} (issuer {:?}): certificateHold released, status good", plan.serial, plan.issuer.name);
    after_commit(config, &client, &unrevoked.after_commit).await;
    Ok(())
}
