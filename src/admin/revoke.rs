//! `admin revoke` and `admin unrevoke`.
//!
//! Both follow one pattern. Input is parsed and validated completely first. Then, in ONE
//! transaction: the rows are locked (`FOR UPDATE`) and checked (an unknown serial fails the
//! whole command, exit 2, and nothing is written); one status version is taken from
//! `status_change_seq` (after the locks, so versions grow along each row's changes); per
//! certificate to change, one `audit_log` row and one `pending_purges` row; then the status
//! UPDATE with `changed_version` and `changed_at = clock_timestamp()`, and one
//! `pg_notify('jitocsp_status', StatusChange payload)` per change carrying the version;
//! COMMIT. Only after the commit are the Redis keys deleted (see `purge`).
//!
//! Responders compare versions, not times, so the length of the transaction does not matter
//! to them: a status read at a lower version than a change they heard of is never used.
//!
//! A revoke of many serials uses set-based statements (`serial = ANY($n)`, `unnest`) rather
//! than one round trip per serial; per row the effect is that of the per-serial
//! `UPDATE ... WHERE reason IS NULL`.
//!
//! A certificate already revoked is skipped and reported, not an error, and keeps its
//! original reason and time, with one exception (BR 4.9.1.1): `--reason keyCompromise` turns
//! an earlier revocation for another reason into keyCompromise, keeping its revocation time or
//! back-dating it to `--at`.

use std::collections::HashMap;
use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio_postgres::{GenericClient, Transaction};

use super::inputs::{parse_at, parse_serial, read_cert_file, read_serials_file, Origin};
use super::purge::{self, PurgeTarget};
use super::{actor, connect, db, find_issuer, AdminError, CertArgs, IssuerRow, RevokeArgs};
use crate::config::Config;
use crate::feed::payload::{StatusChange, CHANNEL};
use crate::ocsp::RevocationReason;
use crate::purge::cdn;
use crate::serial::Serial;

/// How many unknown serials an error message lists by name.
const MAX_NAMED: usize = 10;

/// A certificate's status row.
#[derive(Clone, Debug)]
struct Current {
    reason: Option<i16>,
    revoked_at: Option<DateTime<Utc>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads the status of `serials`; with `lock`, locks the rows for this transaction.
async fn current_states(
    client: &impl GenericClient,
    issuer_id: i32,
    serials: &[&[u8]],
    lock: bool,
) -> Result<HashMap<Vec<u8>, Current>, AdminError> {
    let sql = format!(
        "SELECT serial, reason, revoked_at FROM certificates \
         WHERE issuer_id = $1 AND serial = ANY($2){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let rows = client.query(&sql, &[&issuer_id, &serials]).await.map_err(db("reading the current status"))?;
    Ok(rows.iter().map(|r| (r.get::<_, Vec<u8>>(0), Current { reason: r.get(1), revoked_at: r.get(2) })).collect())
}

/// Fails, naming them, if any serial has no row.
fn check_known(
    serials: &[(Serial, Origin)],
    states: &HashMap<Vec<u8>, Current>,
    issuer_name: &str,
) -> Result<(), AdminError> {
    let missing: Vec<String> =
        serials.iter().filter(|(s, _)| !states.contains_key(s.as_bytes())).map(|(s, o)| format!("{s} ({o})")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut named = missing.iter().take(MAX_NAMED).cloned().collect::<Vec<_>>().join(", ");
    if missing.len() > MAX_NAMED {
        named.push_str(&format!(" and {} more", missing.len() - MAX_NAMED));
    }
    Err(AdminError::input(format!(
        "{} serial(s) have no certificate of issuer {issuer_name:?}: {named}; nothing was changed \
         (import the certificates first, or fix the input)",
        missing.len()
    )))
}

/// One certificate about to change, for the audit log and the pending purge.
struct Planned<'a> {
    serial: &'a Serial,
    before: serde_json::Value,
    after: serde_json::Value,
}

/// Writes the audit rows and the pending purges of `planned`, inside `tx`.
///
/// Runs before the status UPDATE, so that `changed_at` (kept for operators and for the
/// responders' catch-up window) is as close to COMMIT as it can be.
async fn record_planned(
    tx: &Transaction<'_>,
    issuer_id: i32,
    action: &str,
    who: &str,
    txn_now: DateTime<Utc>,
    planned: &[Planned<'_>],
) -> Result<(), AdminError> {
    let serials: Vec<&[u8]> = planned.iter().map(|c| c.serial.as_bytes()).collect();
    let before: Vec<String> = planned.iter().map(|c| c.before.to_string()).collect();
    let after: Vec<String> = planned.iter().map(|c| c.after.to_string()).collect();
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, serial, before, after) \
         SELECT $1, $2, $3, u.serial, u.before::jsonb, u.after::jsonb \
         FROM unnest($4::bytea[], $5::text[], $6::text[]) WITH ORDINALITY AS u(serial, before, after, n) \
         ORDER BY u.n",
        &[&who, &action, &issuer_id, &serials, &before, &after],
    )
    .await
    .map_err(db("writing the audit log"))?;
    tx.execute(
        "INSERT INTO pending_purges (issuer_id, serial, since) \
         SELECT $1, s, $3 FROM unnest($2::bytea[]) AS s \
         ON CONFLICT (issuer_id, serial) DO UPDATE \
         SET since = EXCLUDED.since, attempts = 0, last_error = NULL",
        &[&issuer_id, &serials, &txn_now],
    )
    .await
    .map_err(db("recording the pending cache purges"))?;
    Ok(())
}

/// With a CDN purge hook configured, records one `cdn_purges` row per changed certificate
/// inside `tx` (see `crate::purge::cdn`). Returns the rows' ids.
async fn record_cdn_purges(
    tx: &Transaction<'_>,
    config: &Config,
    issuer: &IssuerRow,
    action: &str,
    serials: &[&Serial],
) -> Result<Vec<i64>, AdminError> {
    if !config.cdn.enabled() {
        return Ok(Vec::new());
    }
    cdn::enqueue(tx, &config.cdn, issuer.id, &issuer.name, &issuer.cert_der, action, serials)
        .await
        .map_err(|detail| AdminError::Database { what: "recording the CDN purges".into(), detail })
}

/// Calls the CDN purge hook for the purges just committed, and tells the operator how it went.
/// A failure is not an error of the command: the purges stay owed and responders retry them.
async fn deliver_cdn_purges(client: &tokio_postgres::Client, config: &Config, ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    if ids.len() > cdn::ADMIN_INLINE_LIMIT {
        println!("CDN purge: {} purges queued; running responders deliver them", ids.len());
        return;
    }
    match cdn::deliver(client, &config.cdn, ids).await {
        Ok(d) if d.failed == 0 && d.done == ids.len() => println!("CDN purge: done ({} certificate(s))", d.done),
        Ok(d) => {
            let left = ids.len() - d.done;
            let error = d.error.map(|e| format!(" ({e})")).unwrap_or_default();
            eprintln!(
                "warning: CDN purge: {} done, {left} pending{error}; running responders retry until the hook succeeds",
                d.done
            );
        }
        Err(e) => eprintln!(
            "warning: CDN purge: could not deliver now ({e}); the purges are recorded and running responders retry them"
        ),
    }
}

/// Queues one `jitocsp_status` notification per change; delivered only if `tx` commits.
async fn notify(tx: &Transaction<'_>, changes: &[StatusChange]) -> Result<(), AdminError> {
    let payloads: Vec<String> = changes.iter().map(StatusChange::to_payload).collect();
    tx.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", &[&CHANNEL, &payloads])
        .await
        .map_err(db("queueing the status notifications"))?;
    Ok(())
}

/// Takes the version of this transaction's status changes. Call after locking the rows.
async fn next_version(tx: &Transaction<'_>) -> Result<i64, AdminError> {
    Ok(tx.query_one("SELECT nextval('status_change_seq')", &[]).await.map_err(db("taking a status version"))?.get(0))
}

/// The transaction's start time: what `pending_purges.since` gets.
async fn transaction_now(tx: &Transaction<'_>) -> Result<DateTime<Utc>, AdminError> {
    Ok(tx.query_one("SELECT now()", &[]).await.map_err(db("reading the database clock"))?.get(0))
}

pub async fn revoke(args: RevokeArgs, config: &Config) -> Result<(), AdminError> {
    // 1. Validate everything that needs no database.
    let reason = RevocationReason::parse(&args.reason).map_err(AdminError::Input)?;
    let at = parse_at(args.at.as_deref(), Utc::now())?;
    let explicit_at = args.at.is_some().then_some(at);
    let mut serials: Vec<(Serial, Origin)> = match (&args.serial, &args.serials_file, &args.cert_file) {
        (Some(s), None, None) => vec![(parse_serial(s, &Origin::Argument)?, Origin::Argument)],
        (None, Some(f), None) => read_serials_file(f)?,
        (None, None, Some(_)) => Vec::new(),
        _ => return Err(AdminError::input("give exactly one of --serial, --serials-file, --cert-file")),
    };

    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    if let Some(path) = &args.cert_file {
        let mut seen = HashSet::new();
        for cert in read_cert_file(path, &issuer.name, &issuer.cert_der)? {
            if seen.insert(cert.serial.clone()) {
                serials.push((cert.serial, cert.origin));
            }
        }
    }
    let by_bytes: HashMap<&[u8], &Serial> = serials.iter().map(|(s, _)| (s.as_bytes(), s)).collect();
    let serial_bytes: Vec<&[u8]> = serials.iter().map(|(s, _)| s.as_bytes()).collect();

    // 2. Dry run: read, report, write nothing.
    if args.dry_run {
        let states = current_states(&client, issuer.id, &serial_bytes, false).await?;
        check_known(&serials, &states, &issuer.name)?;
        let mut would = 0;
        for (serial, _) in &serials {
            let state = &states[serial.as_bytes()];
            if let Some(new_at) = rekey_time(reason, state, explicit_at, serial)? {
                would += 1;
                println!("would change the reason of {serial} to keyCompromise (revoked at {})", rfc3339(new_at));
                continue;
            }
            match state.reason {
                None => {
                    would += 1;
                    println!("would revoke {serial}: good -> revoked ({reason}, at {})", rfc3339(at));
                }
                Some(code) => println!(
                    "already revoked {serial}: {} at {} (would be left unchanged)",
                    RevocationReason::describe_code(code),
                    state.revoked_at.map(rfc3339).unwrap_or_default()
                ),
            }
        }
        println!(
            "dry run: would revoke or re-reason {would}, {} left as they are (issuer {:?}); nothing was changed",
            serials.len() - would,
            issuer.name
        );
        return Ok(());
    }

    // 3. One transaction.
    let who = actor();
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let states = current_states(&tx, issuer.id, &serial_bytes, true).await?;
    check_known(&serials, &states, &issuer.name)?;
    let to_change: Vec<&[u8]> =
        serials.iter().filter(|(s, _)| states[s.as_bytes()].reason.is_none()).map(|(s, _)| s.as_bytes()).collect();
    let mut rekeys: Vec<(&Serial, DateTime<Utc>)> = Vec::new();
    for (serial, _) in &serials {
        if let Some(new_at) = rekey_time(reason, &states[serial.as_bytes()], explicit_at, serial)? {
            rekeys.push((serial, new_at));
        }
    }
    let version = if to_change.is_empty() && rekeys.is_empty() { 0 } else { next_version(&tx).await? };
    let mut changes: Vec<StatusChange> = Vec::with_capacity(to_change.len());
    let mut cdn_ids = Vec::new();
    if !rekeys.is_empty() {
        change_reasons(&tx, &issuer, &who, txn_now, version, &rekeys, &states).await?;
        cdn_ids =
            record_cdn_purges(&tx, config, &issuer, "revoke", &rekeys.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .await?;
        let rekeyed: Vec<StatusChange> = rekeys
            .iter()
            .map(|(serial, _)| StatusChange { issuer_id: issuer.id, serial: (*serial).clone(), revoked: true, version })
            .collect();
        notify(&tx, &rekeyed).await?;
    }
    if !to_change.is_empty() {
        let planned: Vec<Planned> = to_change
            .iter()
            .map(|b| Planned {
                serial: by_bytes[b],
                before: serde_json::json!({ "status": "good" }),
                after: serde_json::json!({
                    "status": "revoked",
                    "reason": reason.name(),
                    "reason_code": reason.code(),
                    "revoked_at": rfc3339(at),
                }),
            })
            .collect();
        record_planned(&tx, issuer.id, "revoke", &who, txn_now, &planned).await?;
        let changing: Vec<&Serial> = planned.iter().map(|p| p.serial).collect();
        cdn_ids.extend(record_cdn_purges(&tx, config, &issuer, "revoke", &changing).await?);
        let rows = tx
            .query(
                "UPDATE certificates SET reason = $3, revoked_at = $4, changed_at = clock_timestamp(), \
                 changed_version = $5 \
                 WHERE issuer_id = $1 AND serial = ANY($2) AND reason IS NULL \
                 RETURNING serial",
                &[&issuer.id, &to_change, &reason.code(), &at, &version],
            )
            .await
            .map_err(db("revoking"))?;
        if rows.len() != to_change.len() {
            // Cannot happen: the rows are locked. Dropping `tx` rolls everything back.
            return Err(AdminError::Operational(format!(
                "expected to revoke {} certificates but changed {}; nothing was changed",
                to_change.len(),
                rows.len()
            )));
        }
        for row in rows {
            let bytes: Vec<u8> = row.get(0);
            changes.push(StatusChange {
                issuer_id: issuer.id,
                serial: (*by_bytes[bytes.as_slice()]).clone(),
                revoked: true,
                version,
            });
        }
        notify(&tx, &changes).await?;
        // Keep the operator's order in the output.
        let order: HashMap<&[u8], usize> = to_change.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        changes.sort_by_key(|c| order[c.serial.as_bytes()]);
    }
    tx.commit().await.map_err(db("committing the revocation"))?;

    // 4. Report, then purge the cache.
    for change in &changes {
        tracing::info!(target: "jitocsp::audit", actor = %who, action = "revoke", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %change.serial, reason = reason.name(),
            revoked_at = %rfc3339(at), version, "certificate revoked");
        println!("revoked {} ({reason}, at {})", change.serial, rfc3339(at));
    }
    for (serial, new_at) in &rekeys {
        tracing::info!(target: "jitocsp::audit", actor = %who, action = "reason_change", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %serial, reason = reason.name(), revoked_at = %rfc3339(*new_at), version,
            "revocation reason changed to keyCompromise");
        println!("changed the reason of {serial} to keyCompromise (revoked at {})", rfc3339(*new_at));
        changes.push(StatusChange { issuer_id: issuer.id, serial: (*serial).clone(), revoked: true, version });
    }
    let changed: HashSet<&[u8]> = changes.iter().map(|c| c.serial.as_bytes()).collect();
    let mut skipped = 0;
    for (serial, _) in &serials {
        if changed.contains(serial.as_bytes()) {
            continue;
        }
        skipped += 1;
        let state = &states[serial.as_bytes()];
        println!(
            "already revoked {serial}: {} at {}; left unchanged",
            state.reason.map(RevocationReason::describe_code).unwrap_or_default(),
            state.revoked_at.map(rfc3339).unwrap_or_default()
        );
    }
    let targets: Vec<PurgeTarget> = changes
        .iter()
        .map(|c| PurgeTarget { issuer_id: issuer.id, serial: c.serial.clone(), since: Some(txn_now) })
        .collect();
    let outcome = purge::purge(config, &client, &targets).await;
    purge::report(&outcome);
    deliver_cdn_purges(&client, config, &cdn_ids).await;
    let rekeyed = match rekeys.len() {
        0 => String::new(),
        n => format!("{n} changed to keyCompromise, "),
    };
    println!(
        "{} revoked, {rekeyed}{skipped} already revoked (issuer {:?}, reason {reason})",
        changes.len() - rekeys.len(),
        issuer.name
    );
    Ok(())
}

/// BR 4.9.1.1: evidence of key compromise for a certificate already revoked for another
/// reason turns its reason into keyCompromise. Returns the revocation time it gets (kept, or
/// back-dated to `--at`), or `None` if this revocation is not such a change.
fn rekey_time(
    reason: RevocationReason,
    state: &Current,
    explicit_at: Option<DateTime<Utc>>,
    serial: &Serial,
) -> Result<Option<DateTime<Utc>>, AdminError> {
    let (Some(code), Some(revoked_at)) = (state.reason, state.revoked_at) else { return Ok(None) };
    if reason != RevocationReason::KeyCompromise || code == RevocationReason::KeyCompromise.code() {
        return Ok(None);
    }
    match explicit_at {
        None => Ok(Some(revoked_at)),
        Some(at) if at <= revoked_at => Ok(Some(at)),
        Some(at) => Err(AdminError::input(format!(
            "serial {serial} was revoked at {}; --at {} would move it later (a reason change to keyCompromise \
             keeps the revocation time or back-dates it); nothing was changed",
            rfc3339(revoked_at),
            rfc3339(at)
        ))),
    }
}

/// Changes the reason of already revoked certificates to keyCompromise, with their audit
/// rows and pending purges, inside `tx`.
#[allow(clippy::too_many_arguments)]
async fn change_reasons(
    tx: &Transaction<'_>,
    issuer: &IssuerRow,
    who: &str,
    txn_now: DateTime<Utc>,
    version: i64,
    rekeys: &[(&Serial, DateTime<Utc>)],
    states: &HashMap<Vec<u8>, Current>,
) -> Result<(), AdminError> {
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
    record_planned(tx, issuer.id, "reason_change", who, txn_now, &planned).await?;
    let serials: Vec<&[u8]> = rekeys.iter().map(|(s, _)| s.as_bytes()).collect();
    let times: Vec<DateTime<Utc>> = rekeys.iter().map(|(_, t)| *t).collect();
    let changed = tx
        .execute(
            "UPDATE certificates c SET reason = $3, revoked_at = u.at, changed_at = clock_timestamp(), \
             changed_version = $4 \
             FROM unnest($2::bytea[], $5::timestamptz[]) AS u(serial, at) \
             WHERE c.issuer_id = $1 AND c.serial = u.serial AND c.reason IS NOT NULL",
            &[&issuer.id, &serials, &key_compromise.code(), &version, &times],
        )
        .await
        .map_err(db("changing revocation reasons"))?;
    if changed as usize != rekeys.len() {
        return Err(AdminError::Operational(format!(
            "expected to change {} reasons but changed {changed}; nothing was changed",
            rekeys.len()
        )));
    }
    Ok(())
}

pub async fn unrevoke(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    let who = actor();
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let states = current_states(&tx, issuer.id, &[serial.as_bytes()], true).await?;
    let Some(state) = states.get(serial.as_bytes()) else {
        return Err(AdminError::input(format!("serial {serial} has no certificate of issuer {:?}", issuer.name)));
    };
    match state.reason {
        None => return Err(AdminError::input(format!("serial {serial} is not revoked; nothing to undo"))),
        Some(code) if code != RevocationReason::CertificateHold.code() => {
            return Err(AdminError::input(format!(
                "serial {serial} was revoked with reason {}; only a certificateHold can be undone",
                RevocationReason::describe_code(code)
            )))
        }
        Some(_) => {}
    }
    let planned = Planned {
        serial: &serial,
        before: serde_json::json!({
            "status": "revoked",
            "reason": RevocationReason::CertificateHold.name(),
            "reason_code": RevocationReason::CertificateHold.code(),
            "revoked_at": state.revoked_at.map(rfc3339),
        }),
        after: serde_json::json!({ "status": "good" }),
    };
    record_planned(&tx, issuer.id, "unrevoke", &who, txn_now, std::slice::from_ref(&planned)).await?;
    let cdn_ids = record_cdn_purges(&tx, config, &issuer, "unrevoke", &[&serial]).await?;
    let version = next_version(&tx).await?;
    tx.execute(
        "UPDATE certificates SET reason = NULL, revoked_at = NULL, changed_at = clock_timestamp(), \
         changed_version = $4 WHERE issuer_id = $1 AND serial = $2 AND reason = $3",
        &[&issuer.id, &serial.as_bytes(), &RevocationReason::CertificateHold.code(), &version],
    )
    .await
    .map_err(db("unrevoking"))?;
    notify(&tx, &[StatusChange { issuer_id: issuer.id, serial: serial.clone(), revoked: false, version }]).await?;
    tx.commit().await.map_err(db("committing the unrevoke"))?;
    tracing::info!(target: "jitocsp::audit", actor = %who, action = "unrevoke", issuer = %issuer.name,
        issuer_id = issuer.id, serial = %serial, version, "certificate hold released");
    println!("unrevoked {serial} (issuer {:?}): certificateHold released, status good", issuer.name);
    let outcome =
        purge::purge(config, &client, &[PurgeTarget { issuer_id: issuer.id, serial, since: Some(txn_now) }]).await;
    purge::report(&outcome);
    deliver_cdn_purges(&client, config, &cdn_ids).await;
    Ok(())
}
