//! Revocation, and the reason change to keyCompromise (BR 4.9.1.1). The transaction is
//! described in [`crate::status`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Transaction};

use super::record::{next_version, notify, record_cdn_purges, record_planned, transaction_now, Planned};
use super::{db, rfc3339, AfterCommit, IssuerRow, Origin, StatusError};
use crate::config::CdnConfig;
use crate::db::certificates::{self, StatusRow};
use crate::feed::payload::StatusChange;
use crate::ocsp::RevocationReason;
use crate::purge::pending::PurgeTarget;
use crate::serial::Serial;

/// A validated revocation.
#[derive(Clone, Debug)]
pub struct RevokePlan {
    pub issuer: IssuerRow,
    /// Each serial once, in the operator's order, with where it came from.
    pub serials: Vec<(Serial, Origin)>,
    pub reason: RevocationReason,
    /// The revocation time of certificates revoked now.
    pub at: DateTime<Utc>,
    /// Whether `at` was given by the operator; only then does it back-date a reason change.
    pub at_given: bool,
    /// Read and report, write nothing.
    pub dry_run: bool,
    /// Who is making the change, for the audit log.
    pub actor: String,
}

impl RevokePlan {
    /// A plan for `serials`, of which repeats are dropped (the first origin is kept).
    pub fn new(
        issuer: IssuerRow,
        serials: Vec<(Serial, Origin)>,
        reason: RevocationReason,
        at: DateTime<Utc>,
        at_given: bool,
        dry_run: bool,
        actor: String,
    ) -> Self {
        let mut seen = HashSet::with_capacity(serials.len());
        let serials = serials.into_iter().filter(|(s, _)| seen.insert(s.clone())).collect();
        RevokePlan { issuer, serials, reason, at, at_given, dry_run, actor }
    }
}

/// What a revocation does (or would do) to one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good, becomes revoked.
    Revoke,
    /// Revoked for another reason, becomes keyCompromise, revoked at `revoked_at`.
    ChangeReason { revoked_at: DateTime<Utc> },
    /// Already revoked: left as it is.
    AlreadyRevoked(StatusRow),
}

/// A dry run: the verdicts in the operator's order, up to the first refusal, if any.
#[derive(Debug)]
pub struct Preview {
    pub verdicts: Vec<(Serial, Verdict)>,
    /// Why the revocation would be refused; `verdicts` stop before the serial concerned.
    pub refused: Option<StatusError>,
}

/// A committed revocation.
#[derive(Debug)]
pub struct Revoked {
    /// The status version of every change (0 when nothing changed).
    pub version: i64,
    /// Newly revoked, in the operator's order.
    pub revoked: Vec<Serial>,
    /// Reason changed to keyCompromise, with the revocation time they now have.
    pub reason_changed: Vec<(Serial, DateTime<Utc>)>,
    /// Already revoked and left as they were, with their state.
    pub unchanged: Vec<(Serial, StatusRow)>,
    pub after_commit: AfterCommit,
}

/// What [`revoke`] did.
#[derive(Debug)]
pub enum RevokeOutcome {
    DryRun(Preview),
    Committed(Revoked),
}

/// Carries out `plan` (see the module documentation of [`crate::status`] for the
/// transaction). A refusal or failure changes nothing. The purges the commit owes are in the
/// outcome, not yet done.
pub async fn revoke(client: &mut Client, cdn: &CdnConfig, plan: &RevokePlan) -> Result<RevokeOutcome, StatusError> {
    let serial_bytes: Vec<&[u8]> = plan.serials.iter().map(|(s, _)| s.as_bytes()).collect();
    if plan.dry_run {
        let states = certificates::statuses(&*client, plan.issuer.id, &serial_bytes, false)
            .await
            .map_err(db("reading the current status"))?;
        check_known(plan, &states)?;
        let (verdicts, refused) = classify(plan, &states);
        let verdicts = verdicts.into_iter().map(|(s, v)| (s.clone(), v)).collect();
        return Ok(RevokeOutcome::DryRun(Preview { verdicts, refused }));
    }

    let issuer = &plan.issuer;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let states =
        certificates::statuses(&tx, issuer.id, &serial_bytes, true).await.map_err(db("reading the current status"))?;
    check_known(plan, &states)?;
    let (verdicts, refused) = classify(plan, &states);
    if let Some(refused) = refused {
        return Err(refused);
    }
    let to_change: Vec<&Serial> = verdicts.iter().filter(|(_, v)| *v == Verdict::Revoke).map(|(s, _)| *s).collect();
    let rekeys: Vec<(&Serial, DateTime<Utc>)> = verdicts
        .iter()
        .filter_map(|(s, v)| match v {
            Verdict::ChangeReason { revoked_at } => Some((*s, *revoked_at)),
            _ => None,
        })
        .collect();
    let version = if to_change.is_empty() && rekeys.is_empty() { 0 } else { next_version(&tx).await? };
    let mut cdn_ids = Vec::new();
    if !rekeys.is_empty() {
        change_reasons(&tx, plan, txn_now, version, &rekeys, &states).await?;
        let serials: Vec<&Serial> = rekeys.iter().map(|(s, _)| *s).collect();
        cdn_ids = record_cdn_purges(&tx, cdn, issuer, "revoke", &serials).await?;
        notify(&tx, &status_changes(issuer.id, &serials, version)).await?;
    }
    if !to_change.is_empty() {
        let after = serde_json::json!({
            "status": "revoked",
            "reason": plan.reason.name(),
            "reason_code": plan.reason.code(),
            "revoked_at": rfc3339(plan.at),
        });
        let planned: Vec<Planned> = to_change
            .iter()
            .map(|serial| Planned { serial, before: serde_json::json!({ "status": "good" }), after: after.clone() })
            .collect();
        record_planned(&tx, issuer.id, "revoke", &plan.actor, txn_now, &planned).await?;
        cdn_ids.extend(record_cdn_purges(&tx, cdn, issuer, "revoke", &to_change).await?);
        let bytes: Vec<&[u8]> = to_change.iter().map(|s| s.as_bytes()).collect();
        let changed = certificates::revoke(&tx, issuer.id, &bytes, plan.reason.code(), plan.at, version)
            .await
            .map_err(db("revoking"))?;
        if changed.len() != to_change.len() {
            // Cannot happen: the rows are locked. Dropping `tx` rolls everything back.
            return Err(StatusError::RevokedCount { expected: to_change.len(), changed: changed.len() });
        }
        notify(&tx, &status_changes(issuer.id, &to_change, version)).await?;
    }
    tx.commit().await.map_err(db("committing the revocation"))?;

    for serial in &to_change {
        tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "revoke", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %serial, reason = plan.reason.name(),
            revoked_at = %rfc3339(plan.at), version, "certificate revoked");
    }
    for (serial, new_at) in &rekeys {
        tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "reason_change", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %serial, reason = plan.reason.name(), revoked_at = %rfc3339(*new_at),
            version, "revocation reason changed to keyCompromise");
    }
    let changed: Vec<&Serial> = to_change.iter().chain(rekeys.iter().map(|(s, _)| s)).copied().collect();
    let targets = changed
        .iter()
        .map(|s| PurgeTarget { issuer_id: issuer.id, serial: (*s).clone(), since: Some(txn_now) })
        .collect();
    let unchanged = verdicts
        .into_iter()
        .filter_map(|(s, v)| match v {
            Verdict::AlreadyRevoked(state) => Some((s.clone(), state)),
            _ => None,
        })
        .collect();
    Ok(RevokeOutcome::Committed(Revoked {
        version,
        revoked: to_change.into_iter().cloned().collect(),
        reason_changed: rekeys.into_iter().map(|(s, t)| (s.clone(), t)).collect(),
        unchanged,
        after_commit: AfterCommit { targets, cdn_ids },
    }))
}

fn status_changes(issuer_id: i32, serials: &[&Serial], version: i64) -> Vec<StatusChange> {
    serials.iter().map(|s| StatusChange { issuer_id, serial: (*s).clone(), revoked: true, version }).collect()
}

/// Fails, naming them, if any serial has no row.
fn check_known(plan: &RevokePlan, states: &HashMap<Vec<u8>, StatusRow>) -> Result<(), StatusError> {
    let missing: Vec<(Serial, Origin)> =
        plan.serials.iter().filter(|(s, _)| !states.contains_key(s.as_bytes())).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StatusError::UnknownSerials { issuer: plan.issuer.name.clone(), missing })
}

/// The verdict on each serial of `plan` (all known to `states`), in order, up to the first
/// refusal.
fn classify<'p>(
    plan: &'p RevokePlan,
    states: &HashMap<Vec<u8>, StatusRow>,
) -> (Vec<(&'p Serial, Verdict)>, Option<StatusError>) {
    let explicit_at = plan.at_given.then_some(plan.at);
    let mut verdicts = Vec::with_capacity(plan.serials.len());
    for (serial, _) in &plan.serials {
        let Some(state) = states.get(serial.as_bytes()) else { continue };
        let verdict = match rekey_time(plan.reason, state, explicit_at, serial) {
            Err(refused) => return (verdicts, Some(refused)),
            Ok(Some(revoked_at)) => Verdict::ChangeReason { revoked_at },
            Ok(None) if state.reason.is_none() => Verdict::Revoke,
            Ok(None) => Verdict::AlreadyRevoked(state.clone()),
        };
        verdicts.push((serial, verdict));
    }
    (verdicts, None)
}

/// BR 4.9.1.1: evidence of key compromise for a certificate already revoked for another
/// reason turns its reason into keyCompromise. Returns the revocation time it gets (kept, or
/// back-dated to `explicit_at`), or `None` if this revocation is not such a change.
pub fn rekey_time(
    reason: RevocationReason,
    state: &StatusRow,
    explicit_at: Option<DateTime<Utc>>,
    serial: &Serial,
) -> Result<Option<DateTime<Utc>>, StatusError> {
    let (Some(code), Some(revoked_at)) = (state.reason, state.revoked_at) else { return Ok(None) };
    if reason != RevocationReason::KeyCompromise || code == RevocationReason::KeyCompromise.code() {
        return Ok(None);
    }
    match explicit_at {
        None => Ok(Some(revoked_at)),
        Some(at) if at <= revoked_at => Ok(Some(at)),
        Some(at) => Err(StatusError::LaterRevocationTime { serial: serial.clone(), revoked_at, at }),
    }
}

/// Changes the reason of already revoked certificates to keyCompromise, with their audit
/// rows and pending purges, inside `tx`.
async fn change_reasons(
    tx: &Transaction<'_>,
    plan: &RevokePlan,
    txn_now: DateTime<Utc>,
    version: i64,
    rekeys: &[(&Serial, DateTime<Utc>)],
    states: &HashMap<Vec<u8>, StatusRow>,
) -> Result<(), StatusError> {
    let key_compromise = RevocationReason::KeyCompromise;
    let planned: Vec<Planned> = rekeys
        .iter()
        .map(|(serial, new_at)| {
            let state = &states[serial.as_bytes()];
            Planned {
                serial,
                before: serde_json::json!({
                    "status": "revoked",
                    "reason": state.reason.map(RevocationReason::describe_code),
                    "reason_code": state.reason,
                    "revoked_at": state.revoked_at.map(rfc3339),
                }),
                after: serde_json::json!({
                    "status": "revoked",
                    "reason": key_compromise.name(),
                    "reason_code": key_compromise.code(),
                    "revoked_at": rfc3339(*new_at),
                }),
            }
        })
        .collect();
    record_planned(tx, plan.issuer.id, "reason_change", &plan.actor, txn_now, &planned).await?;
    let serials: Vec<&[u8]> = rekeys.iter().map(|(s, _)| s.as_bytes()).collect();
    let times: Vec<DateTime<Utc>> = rekeys.iter().map(|(_, t)| *t).collect();
    let changed = certificates::set_reasons(tx, plan.issuer.id, &serials, &times, key_compromise.code(), version)
        .await
        .map_err(db("changing revocation reasons"))?;
    if changed as usize != rekeys.len() {
        return Err(StatusError::ReasonCount { expected: rekeys.len(), changed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn serial(hex: &str) -> Serial {
        Serial::from_hex(hex).unwrap()
    }

    fn revoked(code: RevocationReason, at: DateTime<Utc>) -> StatusRow {
        StatusRow { reason: Some(code.code()), revoked_at: Some(at) }
    }

    fn plan(serials: &[&str], reason: RevocationReason, at: Option<DateTime<Utc>>) -> RevokePlan {
        let issuer = IssuerRow { id: 1, name: "ca".into(), cert_der: Vec::new() };
        let serials =
            serials.iter().enumerate().map(|(i, s)| (serial(s), Origin::Line { source: "f".into(), line: i + 1 }));
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        RevokePlan::new(issuer, serials.collect(), reason, at.unwrap_or(now), at.is_some(), false, "me".into())
    }

    #[test]
    fn rekey_time_keeps_or_back_dates_and_never_moves_later() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        let earlier = t - chrono::TimeDelta::days(1);
        let later = t + chrono::TimeDelta::days(1);
        let s = serial("0a01");
        let kc = RevocationReason::KeyCompromise;
        let superseded = revoked(RevocationReason::Superseded, t);
        assert_eq!(rekey_time(kc, &superseded, None, &s).unwrap(), Some(t));
        assert_eq!(rekey_time(kc, &superseded, Some(earlier), &s).unwrap(), Some(earlier));
        assert_eq!(rekey_time(kc, &superseded, Some(t), &s).unwrap(), Some(t));
        let e = rekey_time(kc, &superseded, Some(later), &s).unwrap_err();
        assert!(e.is_input() && e.to_string().contains("would move it later"), "{e}");
        // Not a reason change: another reason, already keyCompromise, or good.
        assert_eq!(rekey_time(RevocationReason::Superseded, &superseded, None, &s).unwrap(), None);
        assert_eq!(rekey_time(kc, &revoked(kc, t), Some(later), &s).unwrap(), None);
        assert_eq!(rekey_time(kc, &StatusRow { reason: None, revoked_at: None }, None, &s).unwrap(), None);
    }

    #[test]
    fn plan_drops_repeated_serials_keeping_the_first_origin() {
        let p = plan(&["01", "02", "0001", "03", "02"], RevocationReason::KeyCompromise, None);
        let kept: Vec<String> = p.serials.iter().map(|(s, o)| format!("{s} {o}")).collect();
        assert_eq!(kept, ["01 f line 1", "02 f line 2", "03 f line 4"]);
    }

    #[test]
    fn classify_in_order_and_stop_at_the_first_refusal() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        let states: HashMap<Vec<u8>, StatusRow> = [
            (serial("01"), StatusRow { reason: None, revoked_at: None }),
            (serial("02"), revoked(RevocationReason::Superseded, t)),
            (serial("03"), revoked(RevocationReason::KeyCompromise, t)),
        ]
        .into_iter()
        .map(|(s, st)| (s.as_bytes().to_vec(), st))
        .collect();
        let p = plan(&["01", "02", "03"], RevocationReason::KeyCompromise, None);
        let (verdicts, refused) = classify(&p, &states);
        assert!(refused.is_none());
        let verdicts: Vec<Verdict> = verdicts.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Revoke,
                Verdict::ChangeReason { revoked_at: t },
                Verdict::AlreadyRevoked(revoked(RevocationReason::KeyCompromise, t))
            ]
        );
        // An explicit time after 02's revocation refuses at 02, after judging 01.
        let p = plan(&["01", "02", "03"], RevocationReason::KeyCompromise, Some(t + chrono::TimeDelta::days(1)));
        let (verdicts, refused) = classify(&p, &states);
        assert_eq!(verdicts.len(), 1);
        assert!(matches!(refused, Some(StatusError::LaterRevocationTime { .. })));
        // Another reason never changes a revoked certificate.
        let p = plan(&["02"], RevocationReason::Superseded, None);
        assert!(matches!(classify(&p, &states).0[0].1, Verdict::AlreadyRevoked(_)));
    }
}
