//! Undoing a certificateHold, and only that: every other revocation is final (RFC 5280
//! 5.3.1). The transaction is described in [`crate::status`].

use tokio_postgres::Client;

use super::record::{arm_purges, audit, next_version, notify, record_cdn_purges, transaction_now, Planned};
use super::{db, rfc3339, AfterCommit, IssuerRow, StatusError};
use crate::config::CdnConfig;
use crate::db::certificates;
use crate::ocsp::RevocationReason;
use crate::purge::pending::{Owed, PurgeTarget};
use crate::serial::Serial;

/// A validated unrevoke.
#[derive(Clone, Debug)]
pub struct UnrevokePlan {
    pub issuer: IssuerRow,
    pub serial: Serial,
    /// Who is making the change, for the audit log.
    pub actor: String,
}

/// A committed unrevoke.
#[derive(Debug)]
pub struct Unrevoked {
    pub version: i64,
    pub after_commit: AfterCommit,
}

/// Makes the certificate of `plan` good again if it is on hold; refuses otherwise.
pub async fn unrevoke(client: &mut Client, cdn: &CdnConfig, plan: &UnrevokePlan) -> Result<Unrevoked, StatusError> {
    let (issuer, serial) = (&plan.issuer, &plan.serial);
    let hold = RevocationReason::CertificateHold;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let states = certificates::statuses(&tx, issuer.id, &[serial.as_bytes()], true)
        .await
        .map_err(db("reading the current status"))?;
    let Some(state) = states.get(serial.as_bytes()) else {
        return Err(StatusError::UnknownSerial { issuer: issuer.name.clone(), serial: serial.clone() });
    };
    match state.reason {
        None => return Err(StatusError::NotRevoked { serial: serial.clone() }),
        Some(code) if code != hold.code() => return Err(StatusError::NotOnHold { serial: serial.clone(), code }),
        Some(_) => {}
    }
    let planned = Planned {
        serial,
        before: serde_json::json!({
            "status": "revoked",
            "reason": hold.name(),
            "reason_code": hold.code(),
            "revoked_at": state.revoked_at.map(rfc3339),
        }),
        after: serde_json::json!({ "status": "good" }),
    };
    audit(&tx, issuer.id, "unrevoke", &plan.actor, std::slice::from_ref(&planned)).await?;
    let owed = Owed::Batch(arm_purges(&tx, issuer.id, &[serial], txn_now).await?);
    let cdn_ids = record_cdn_purges(&tx, cdn, issuer, "unrevoke", &[serial]).await?;
    let version = next_version(&tx).await?;
    certificates::unrevoke(&tx, issuer.id, serial.as_bytes(), hold.code(), version).await.map_err(db("unrevoking"))?;
    notify(&tx, issuer.id, false, version, &[serial]).await?;
    tx.commit().await.map_err(db("committing the unrevoke"))?;
    tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "unrevoke", issuer = %issuer.name,
        issuer_id = issuer.id, serial = %serial, version, "certificate hold released");
    let targets = vec![PurgeTarget { issuer_id: issuer.id, serial: serial.clone(), owed }];
    Ok(Unrevoked { version, after_commit: AfterCommit { targets, cdn_ids } })
}
