//! `admin purge`, and the printing of a purge's outcome after a status change. The purge
//! itself (delete the Redis keys, settle `pending_purges`) is [`crate::purge::pending`].

use tokio_postgres::Client;

use super::inputs::{parse_serial, Origin};
use super::{connect, db, find_issuer, AdminError, CertArgs};
use crate::config::Config;
use crate::db::pending_purges;
use crate::purge::pending::{purge_now, PurgeOutcome, PurgeTarget, SettleWarning};
use crate::serial::Serial;

/// Prints the purge state after a status change; never fails the command.
pub fn report((outcome, warnings): &(PurgeOutcome, Vec<SettleWarning>)) {
    warn_settle(warnings);
    match outcome {
        PurgeOutcome::Done { purged } => {
            println!("cache: purged the cached responses of {purged} certificate(s)")
        }
        PurgeOutcome::Failed { purged, pending, error } => {
            if *purged > 0 {
                println!("cache: purged the cached responses of {purged} certificate(s)");
            }
            eprintln!("warning: could not purge the cached responses of {pending} certificate(s): {error}");
            eprintln!(
                "warning: the purge is pending (table pending_purges) and will be retried by the \
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
                "warning: Redis keys deleted, but the pending_purges rows could not be removed ({e}); \
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
    let others = targets.len() - 1;
    let (outcome, warnings) = purge_now(config, &client, &targets).await;
    warn_settle(&warnings);
    match outcome {
        PurgeOutcome::Done { .. } => {
            println!("purged the cached responses of serial {serial} (issuer {:?})", issuer.name);
            println!("retried {others} other pending purge(s): all done");
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
    let pending = pending_purges::oldest(client, None).await.map_err(db("reading pending_purges"))?;
    let mut targets = vec![PurgeTarget { issuer_id, serial: serial.clone(), since: None }];
    for row in pending {
        match Serial::from_signed_be(&row.serial) {
            Ok(s) if row.issuer_id == issuer_id && s == *serial => targets[0].since = Some(row.since),
            Ok(s) => targets.push(PurgeTarget { issuer_id: row.issuer_id, serial: s, since: Some(row.since) }),
            Err(e) => eprintln!(
                "warning: pending_purges has an unusable serial {} (issuer {}): {e}",
                hex::encode(&row.serial),
                row.issuer_id
            ),
        }
    }
    Ok(targets)
}
