//! `admin purge`, and the printing of a purge's outcome after a status change. The purge
//! itself (delete the Redis keys, settle what they owed) is [`crate::purge::pending`].

use tokio_postgres::Client;

use super::inputs::{parse_serial, Origin};
use super::listing::say;
use super::{connect, db, find_issuer, AdminError, CertArgs};
use crate::config::Config;
use crate::db::pending_purges;
use crate::purge::pending::{purge_now, Owed, PurgeOutcome, PurgeTarget, SettleWarning};
use crate::serial::Serial;

/// Prints the purge state after a status change; never fails the command.
pub fn report((outcome, warnings): &(PurgeOutcome, Vec<SettleWarning>)) {
    warn_settle(warnings);
    match outcome {
        PurgeOutcome::Done { purged } => {
            say!("cache: purged the cached responses of {purged} certificate(s)")
        }
        PurgeOutcome::Failed { purged, pending, error } => {
            if *purged > 0 {
                say!("cache: purged the cached responses of {purged} certificate(s)");
            }
            eprintln!("warning: could not purge the cached responses of {pending} certificate(s): {error}");
            eprintln!(
                "warning: the purge is pending (table pending_purge_batches) and will be retried by the \
                 running responders; they were notified of the change and will not serve the old \
                 status. `jitocsp admin purge` retries it now."
            );
        }
    }
}

fn warn_settle(warnings: &[SettleWarning]) {
    for warning in warnings {
        match warning {
            SettleWarning::NotRemoved(e) => eprintln!(
                "warning: Redis keys deleted, but the pending purges could not be removed ({e}); \
                 responders will purge again, harmlessly"
            ),
            SettleWarning::NotRecorded(e) => eprintln!("warning: could not record the failed purge attempt: {e}"),
        }
    }
}

/// `admin purge --issuer NAME --serial HEX`: deletes that certificate's cached responses and
/// retries every pending purge. Redis failing is an operational failure here (exit 1).
pub async fn purge_command(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    let targets = targets(&client, issuer.id, &serial).await?;
    // A batch that owes this certificate's purge lists it again: counted once.
    let others = targets.iter().skip(1).filter(|t| !(t.issuer_id == issuer.id && t.serial == serial)).count();
    let (outcome, warnings) = purge_now(config, &client, &targets).await;
    warn_settle(&warnings);
    match outcome {
        PurgeOutcome::Done { .. } => {
            say!("purged the cached responses of serial {serial} (issuer {:?})", issuer.name);
            say!("retried {others} other pending purge(s): all done");
            Ok(())
        }
        PurgeOutcome::Failed { purged, error, .. } => Err(AdminError::Cache {
            what: format!(
                "could not purge the cached responses of serial {serial} (issuer {:?}); \
                 {purged} of {} purges done",
                issuer.name,
                targets.len()
            ),
            source: error,
        }),
    }
}

/// The certificate asked for first, then every other pending purge.
async fn targets(client: &Client, issuer_id: i32, serial: &Serial) -> Result<Vec<PurgeTarget>, AdminError> {
    // Rows read now were committed before the keys are deleted, so deleting them settles them.
    let batches = pending_purges::oldest_batches(client, None).await.map_err(db("reading pending_purge_batches"))?;
    let rows = pending_purges::oldest(client, None).await.map_err(db("reading pending_purges"))?;
    let mut targets = vec![PurgeTarget { issuer_id, serial: serial.clone(), owed: Owed::Nothing }];
    let owed = batches
        .into_iter()
        .flat_map(|b| b.serials.into_iter().map(move |s| (b.issuer_id, s, Owed::Batch(b.id))))
        .chain(rows.into_iter().map(|r| (r.issuer_id, r.serial, Owed::Row(r.since))));
    for (owner, bytes, owed) in owed {
        match Serial::from_signed_be(&bytes) {
            // A pending_purges row of the certificate asked for is settled by its purge.
            Ok(s) if owner == issuer_id && s == *serial && matches!(owed, Owed::Row(_)) => targets[0].owed = owed,
            Ok(s) => targets.push(PurgeTarget { issuer_id: owner, serial: s, owed }),
            Err(e) => eprintln!(
                "warning: a pending purge has an unusable serial {} (issuer {owner}): {e}",
                hex::encode(&bytes),
            ),
        }
    }
    Ok(targets)
}
