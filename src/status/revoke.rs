//! Revocation, and the reason change to keyCompromise (BR 4.9.1.1). The transaction, and how
//! a revocation of many certificates is cut into batches, are described in
//! [`crate::status`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use super::record::{arm_purges, audit, audit_same, next_version, notify, record_cdn_purges, transaction_now, Planned};
use super::{db, rfc3339, AfterCommit, IssuerRow, Origin, Progress, StatusError};
use crate::config::{CdnConfig, Config};
use crate::db::certificates::{self, StatusRow, Tid};
use crate::ocsp::RevocationReason;
use crate::purge::pending::{Owed, PurgeOutcome, PurgeTarget, SettleWarning};
use crate::serial::Serial;

/// Certificates per transaction of a revocation, unless the plan says otherwise: large enough
/// that the per-transaction costs vanish, small enough that a transaction holds its row locks
/// and the audit chain's lock for well under a second.
pub const DEFAULT_BATCH_SIZE: NonZeroUsize = match NonZeroUsize::new(20_000) {
    Some(n) => n,
    None => unreachable!(),
};

/// Batches in flight at once, each on a connection of its own: while one appends its audit
/// rows (which only one transaction at a time can do), the other locks and updates its rows.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Settings for the transaction of a batch. Its statements handle tens of thousands of rows
/// each, once: compiling them (JIT) costs more than it saves, and the audit chain's check
/// (sql/0007) reads the batch's new audit rows several times, which it does from memory
/// rather than from a temporary file if they fit in `work_mem` (a 20,000 batch: 10 MB).
const BATCH_SETTINGS: &str = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'";

/// Serials per query of a dry run.
const PREVIEW_CHUNK: usize = 50_000;

/// Serials streamed between two progress reports of the check.
const CHECK_PROGRESS_STEP: usize = 100_000;

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
    /// Certificates per transaction ([`DEFAULT_BATCH_SIZE`] unless changed).
    pub batch_size: NonZeroUsize,
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
        let serials = first_of_each(serials);
        RevokePlan { issuer, serials, reason, at, at_given, dry_run, actor, batch_size: DEFAULT_BATCH_SIZE }
    }
}

/// `serials` without repeats, in their order; of a repeated serial the first is kept.
pub fn first_of_each<T>(serials: Vec<(Serial, T)>) -> Vec<(Serial, T)> {
    // Flags rather than a set of copies: a mass revocation has millions of serials.
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(serials.len());
        serials.iter().map(|(s, _)| seen.insert(s.as_bytes())).collect()
    };
    if keep.iter().all(|k| *k) {
        return serials;
    }
    serials.into_iter().zip(keep).filter_map(|(entry, keep)| keep.then_some(entry)).collect()
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

/// One committed transaction of a revocation (a batch).
#[derive(Debug)]
pub struct Revoked {
    /// The status version of every change (0 when nothing changed).
    pub version: i64,
    /// Newly revoked, in the batch's order.
    pub revoked: Vec<Serial>,
    /// Reason changed to keyCompromise, with the revocation time they now have.
    pub reason_changed: Vec<(Serial, DateTime<Utc>)>,
    /// Already revoked and left as they were, with their state.
    pub unchanged: Vec<(Serial, StatusRow)>,
    pub after_commit: AfterCommit,
}

impl Revoked {
    /// Certificates of the batch, changed or not.
    pub fn len(&self) -> usize {
        self.revoked.len() + self.reason_changed.len() + self.unchanged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A committed batch and the Redis purge made right after it.
#[derive(Debug)]
pub struct Committed {
    pub batch: Revoked,
    /// `None` when not attempted because an earlier batch's purge failed: Redis is likely
    /// down, and the purges stay owed (`pending_purge_batches`) for the running responders.
    pub purge: Option<(PurgeOutcome, Vec<SettleWarning>)>,
}

/// What a whole revocation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub revoked: usize,
    pub reason_changed: usize,
    pub unchanged: usize,
    /// Transactions committed.
    pub batches: usize,
}

/// A dry run of `plan`: what it would do to each certificate. Reads only.
pub async fn preview(client: &Client, plan: &RevokePlan, progress: &mut dyn Progress) -> Result<Preview, StatusError> {
    let mut states = HashMap::with_capacity(plan.serials.len());
    progress.stage("checking", plan.serials.len() as u64);
    let mut done = 0;
    for chunk in plan.serials.chunks(PREVIEW_CHUNK) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|(s, _)| s.as_bytes()).collect();
        let found = certificates::statuses(client, plan.issuer.id, &bytes, false)
            .await
            .map_err(db("reading the current status"))?;
        states.extend(found);
        done += chunk.len();
        progress.advance(done as u64);
    }
    let all: Vec<&Entry> = plan.serials.iter().collect();
    check_known(plan, &all, &states)?;
    let (verdicts, refused) = classify(plan, &all, &states);
    let verdicts = verdicts.into_iter().map(|(s, _, v)| (s.clone(), v)).collect();
    Ok(Preview { verdicts, refused })
}

/// Carries out `plan` (see [`crate::status`]): checks every serial, then commits batch after
/// batch, two in flight (one on each connection), and purges each batch's Redis keys as soon
/// as it committed. `on_commit` hears of each batch once committed, in the order they were
/// started.
///
/// A refusal found by the check changes nothing. A failure later leaves the batches committed
/// until then, and is returned as [`StatusError::Stopped`] if any was.
pub async fn revoke(
    connections: [&mut Client; BATCHES_IN_FLIGHT],
    config: &Config,
    plan: &RevokePlan,
    progress: &mut dyn Progress,
    on_commit: &mut dyn FnMut(Committed),
) -> Result<Summary, StatusError> {
    let [first, second] = connections;
    let checked = check(first, plan, progress).await?;
    let total = plan.serials.len();
    progress.stage("revoking", total as u64);
    let purge_failed = AtomicBool::new(false);
    let batches = checked.order.chunks(plan.batch_size.get()).map(|located| {
        let batch: Vec<&Entry> = located.iter().filter_map(|(i, _)| plan.serials.get(*i)).collect();
        // The check saw every row of the batch good: no need to read them first.
        let all_good = located.iter().all(|(i, _)| !checked.revoked.contains(i));
        (batch, all_good.then(|| located.iter().map(|(_, tid)| *tid).collect()))
    });
    let mut summary = Summary::default();
    let mut done = 0;
    let failed = in_order(
        vec![first, second],
        batches,
        |client, (batch, good)| run_batch(client, config, plan, batch, good, &purge_failed),
        |committed: Committed| {
            summary.revoked += committed.batch.revoked.len();
            summary.reason_changed += committed.batch.reason_changed.len();
            summary.unchanged += committed.batch.unchanged.len();
            summary.batches += 1;
            done += committed.batch.len();
            on_commit(committed);
            progress.advance(done as u64);
        },
    )
    .await;
    match failed {
        None => Ok(summary),
        Some(error) if done == 0 => Err(error),
        Some(error) => Err(StatusError::Stopped { done, total, source: Box::new(error) }),
    }
}

/// Runs `work` on each of `items`, one at a time on each connection, and hands the results
/// to `take` in the order of `items`. After an error no item starts, those in flight finish
/// (and are taken); the first error is returned.
async fn in_order<'c, Item, T, Fut>(
    mut idle: Vec<&'c mut Client>,
    mut items: impl Iterator<Item = Item>,
    work: impl Fn(&'c mut Client, Item) -> Fut,
    mut take: impl FnMut(T),
) -> Option<StatusError>
where
    Fut: Future<Output = (&'c mut Client, Result<T, StatusError>)>,
{
    let mut in_flight = FuturesOrdered::new();
    let mut failed: Option<StatusError> = None;
    loop {
        while failed.is_none() && !idle.is_empty() {
            let Some(item) = items.next() else { break };
            let Some(client) = idle.pop() else { break };
            in_flight.push_back(work(client, item));
        }
        let Some((client, result)) = in_flight.next().await else { break };
        idle.push(client);
        match result {
            Ok(value) => take(value),
            Err(error) => failed = failed.or(Some(error)),
        }
    }
    failed
}

/// Commits one batch, then purges its Redis keys (unless an earlier purge failed). `good`:
/// the check saw every certificate of the batch good, at these places in the table.
async fn run_batch<'c>(
    client: &'c mut Client,
    config: &Config,
    plan: &RevokePlan,
    batch: Vec<&Entry>,
    good: Option<Vec<Tid>>,
    purge_failed: &AtomicBool,
) -> (&'c mut Client, Result<Committed, StatusError>) {
    let mut committed = None;
    if let Some(tids) = good {
        match revoke_good(client, &config.cdn, plan, &batch, &tids).await {
            Ok(done) => committed = done,
            Err(error) => return (client, Err(error)),
        }
    }
    let revoked = match committed {
        Some(revoked) => revoked,
        None => match commit_batch(client, &config.cdn, plan, &batch).await {
            Ok(revoked) => revoked,
            Err(error) => return (client, Err(error)),
        },
    };
    let purge = if purge_failed.load(Ordering::Relaxed) {
        None
    } else {
        let purge = revoked.after_commit.purge(config, client).await;
        if matches!(purge.0, PurgeOutcome::Failed { .. }) {
            purge_failed.store(true, Ordering::Relaxed);
        }
        Some(purge)
    };
    (client, Ok(Committed { batch: revoked, purge }))
}

/// Checks every serial of `plan` before anything is written: all must have a row, and no
/// reason change may move a revocation time later.
async fn check(client: &mut Client, plan: &RevokePlan, progress: &mut dyn Progress) -> Result<Checked, StatusError> {
    let total = plan.serials.len();
    progress.stage("checking", total as u64);
    // Only reads; the transaction holds the temporary table.
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.batch_execute(certificates::REVOKE_CHECK_TABLE).await.map_err(db("creating the check table"))?;
    let sink = tx.copy_in(certificates::REVOKE_CHECK_COPY).await.map_err(db("starting COPY"))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::BYTEA]);
    pin_mut!(writer);
    for (i, (serial, _)) in plan.serials.iter().enumerate() {
        let position = i32::try_from(i).map_err(|_| StatusError::TooMany { given: total })?;
        let values: [&(dyn ToSql + Sync); 2] = [&position, &serial.as_bytes()];
        writer.as_mut().write(&values).await.map_err(db("streaming the serials (COPY)"))?;
        if (i + 1) % CHECK_PROGRESS_STEP == 0 {
            progress.advance(i as u64 + 1);
        }
    }
    writer.as_mut().finish().await.map_err(db("finishing COPY"))?;
    let found = certificates::check_streamed(&tx, plan.issuer.id, total).await.map_err(db("checking the serials"))?;
    tx.rollback().await.map_err(db("ending the check"))?;
    if total % CHECK_PROGRESS_STEP != 0 {
        progress.advance(total as u64);
    }

    let explicit_at = plan.at_given.then_some(plan.at);
    let mut missing = Vec::new();
    let mut refused: Option<(usize, StatusError)> = None;
    let mut checked = Checked { order: Vec::with_capacity(total), revoked: HashSet::new() };
    for (i, found) in found {
        let Some((serial, origin)) = plan.serials.get(i) else { continue };
        let Some(found) = found else {
            missing.push((i, (serial.clone(), origin.clone())));
            continue;
        };
        checked.order.push((i, found.tid));
        if found.state.reason.is_some() {
            checked.revoked.insert(i);
            if let Err(e) = rekey_time(plan.reason, &found.state, explicit_at, serial) {
                // The first in the operator's order, as a single transaction would say.
                if refused.as_ref().is_none_or(|(first, _)| i < *first) {
                    refused = Some((i, e));
                }
            }
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable_by_key(|(i, _)| *i);
        let missing = missing.into_iter().map(|(_, m)| m).collect();
        return Err(StatusError::UnknownSerials { issuer: plan.issuer.name.clone(), missing });
    }
    if let Some((_, refused)) = refused {
        return Err(refused);
    }
    tile(&mut checked.order, plan, plan.batch_size.get().saturating_mul(TILE_BATCHES));
    Ok(checked)
}

/// What the check found: the order to revoke in, and which certificates are revoked already.
struct Checked {
    /// Every position in `plan.serials`, with where its row lies, in the order of [`tile`].
    order: Vec<(usize, Tid)>,
    /// Positions of the certificates already revoked.
    revoked: HashSet<usize>,
}

/// Batches per tile of [`tile`].
const TILE_BATCHES: usize = 10;

/// Orders `located` (in the order their rows lie in the table) for the batches: tiles of
/// `rows_per_tile` rows in table order, each sorted by serial.
///
/// A revocation changes each row (new row version) and adds an entry to the primary key,
/// whose order (by serial) has nothing to do with the table's. In table order alone, a batch
/// touches a few hundred pages of the table but one page of the primary key per certificate;
/// by serial alone, the reverse. Tiled, the batches of a tile share its few thousand table
/// pages (which stay in Postgres's cache from one batch to the next) and each touches a
/// tenth of the key's pages, several entries each, rather than a page per certificate.
fn tile(located: &mut [(usize, Tid)], plan: &RevokePlan, rows_per_tile: usize) {
    let serial = |i: usize| plan.serials.get(i).map(|(s, _)| s.as_bytes());
    for chunk in located.chunks_mut(rows_per_tile.max(1)) {
        chunk.sort_by(|(a, _), (b, _)| serial(*a).cmp(&serial(*b)));
    }
}

/// The fast way to commit a batch whose certificates the check saw all good: revoke them
/// without reading them first. The version is taken before the rows are locked, so the
/// UPDATE changes only rows still good and at a lower version; if any row was changed since
/// the check, nothing is committed and `None` says to take the ordinary way
/// ([`commit_batch`]). Versions still only grow along each row's changes. The rows are read
/// where the check found them (`tids`) rather than through the primary key.
async fn revoke_good(
    client: &mut Client,
    cdn: &CdnConfig,
    plan: &RevokePlan,
    batch: &[&Entry],
    tids: &[Tid],
) -> Result<Option<Revoked>, StatusError> {
    let issuer = &plan.issuer;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.batch_execute(BATCH_SETTINGS).await.map_err(db("setting up the transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let version = next_version(&tx).await?;
    let (serials, code) = (serial_bytes(batch), plan.reason.code());
    let changed = certificates::revoke(&tx, issuer.id, &serials, Some(tids), code, plan.at, version)
        .await
        .map_err(db("revoking"))?;
    if changed as usize != batch.len() {
        // Dropping `tx` rolls it back.
        return Ok(None);
    }
    let serials = serials_of(batch);
    let owed = record_changes(&tx, cdn, plan, txn_now, version, &[], &serials).await?;
    tx.commit().await.map_err(db("committing the revocation"))?;
    log_committed(plan, version, &serials, &[]);
    let after_commit = after_commit(issuer, owed, &serials);
    Ok(Some(Revoked {
        version,
        revoked: serials.into_iter().cloned().collect(),
        reason_changed: Vec::new(),
        unchanged: Vec::new(),
        after_commit,
    }))
}

/// One batch of `plan` in one transaction (see [`crate::status`]). The purges the commit owes
/// are in the outcome, not yet done.
async fn commit_batch(
    client: &mut Client,
    cdn: &CdnConfig,
    plan: &RevokePlan,
    batch: &[&Entry],
) -> Result<Revoked, StatusError> {
    let issuer = &plan.issuer;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.batch_execute(BATCH_SETTINGS).await.map_err(db("setting up the transaction"))?;
    let txn_now = transaction_now(&tx).await?;
    let states = certificates::statuses(&tx, issuer.id, &serial_bytes(batch), true)
        .await
        .map_err(db("reading the current status"))?;
    check_known(plan, batch, &states)?;
    let (verdicts, refused) = classify(plan, batch, &states);
    if let Some(refused) = refused {
        return Err(refused);
    }
    let to_change: Vec<&Serial> =
        verdicts.iter().filter(|(_, _, v)| *v == Verdict::Revoke).map(|(s, _, _)| *s).collect();
    let rekeys: Vec<Rekey> = verdicts
        .iter()
        .filter_map(|(serial, was, v)| match v {
            Verdict::ChangeReason { revoked_at } => Some(Rekey { serial, was, revoked_at: *revoked_at }),
            _ => None,
        })
        .collect();
    let changed: Vec<&Serial> = rekeys.iter().map(|r| r.serial).chain(to_change.iter().copied()).collect();
    let mut version = 0;
    let mut owed = Owes::default();
    if !changed.is_empty() {
        version = next_version(&tx).await?;
        if !rekeys.is_empty() {
            change_reasons(&tx, plan, version, &rekeys).await?;
        }
        if !to_change.is_empty() {
            let bytes: Vec<&[u8]> = to_change.iter().map(|s| s.as_bytes()).collect();
            let changed = certificates::revoke(&tx, issuer.id, &bytes, None, plan.reason.code(), plan.at, version)
                .await
                .map_err(db("revoking"))?;
            if changed as usize != to_change.len() {
                // Cannot happen: the rows are locked. Dropping `tx` rolls everything back.
                return Err(StatusError::RevokedCount { expected: to_change.len(), changed: changed as usize });
            }
        }
        owed = record_changes(&tx, cdn, plan, txn_now, version, &rekeys, &to_change).await?;
    }
    tx.commit().await.map_err(db("committing the revocation"))?;

    log_committed(plan, version, &to_change, &rekeys);
    let unchanged = verdicts
        .into_iter()
        .filter_map(|(s, _, v)| match v {
            Verdict::AlreadyRevoked(state) => Some((s.clone(), state)),
            _ => None,
        })
        .collect();
    Ok(Revoked {
        version,
        revoked: to_change.into_iter().cloned().collect(),
        reason_changed: rekeys.into_iter().map(|r| (r.serial.clone(), r.revoked_at)).collect(),
        unchanged,
        after_commit: after_commit(issuer, owed, &changed),
    })
}

/// Everything a batch writes beside the status, once the status rows are changed at
/// `version`: the pending purges, CDN purges, audit rows (last: see [`crate::status`]) and
/// the notifications. Returns what the commit will owe.
async fn record_changes(
    tx: &Transaction<'_>,
    cdn: &CdnConfig,
    plan: &RevokePlan,
    txn_now: DateTime<Utc>,
    version: i64,
    rekeys: &[Rekey<'_>],
    to_change: &[&Serial],
) -> Result<Owes, StatusError> {
    let issuer = &plan.issuer;
    let changed: Vec<&Serial> = rekeys.iter().map(|r| r.serial).chain(to_change.iter().copied()).collect();
    let pending = arm_purges(tx, issuer.id, &changed, txn_now).await?;
    let cdn_ids = record_cdn_purges(tx, cdn, issuer, "revoke", &changed).await?;
    audit_changes(tx, plan, txn_now, rekeys, to_change).await?;
    notify(tx, issuer.id, true, version, &changed).await?;
    Ok(Owes { pending: Some(pending), cdn_ids })
}

/// The purges a batch recorded as owed: its `pending_purge_batches` row (none when nothing
/// changed) and its CDN purges.
#[derive(Default)]
struct Owes {
    pending: Option<i64>,
    cdn_ids: Vec<i64>,
}

/// The purges a committed batch owes for `changed`.
fn after_commit(issuer: &IssuerRow, owed: Owes, changed: &[&Serial]) -> AfterCommit {
    let settles = owed.pending.map_or(Owed::Nothing, Owed::Batch);
    let targets =
        changed.iter().map(|s| PurgeTarget { issuer_id: issuer.id, serial: (*s).clone(), owed: settles }).collect();
    AfterCommit { targets, cdn_ids: owed.cdn_ids }
}

fn serials_of<'a>(batch: &[&'a Entry]) -> Vec<&'a Serial> {
    batch.iter().map(|(s, _)| s).collect()
}

/// A certificate whose reason becomes keyCompromise.
struct Rekey<'a> {
    serial: &'a Serial,
    /// Its state before.
    was: &'a StatusRow,
    /// Its revocation time after.
    revoked_at: DateTime<Utc>,
}

/// The audit rows of a batch: one per reason change (each with its own before), one per
/// revocation (all alike). Written last in the transaction: see [`crate::status`].
async fn audit_changes(
    tx: &Transaction<'_>,
    plan: &RevokePlan,
    txn_now: DateTime<Utc>,
    rekeys: &[Rekey<'_>],
    to_change: &[&Serial],
) -> Result<(), StatusError> {
    if !rekeys.is_empty() {
        let key_compromise = RevocationReason::KeyCompromise;
        let planned: Vec<Planned> = rekeys
            .iter()
            .map(|r| Planned {
                serial: r.serial,
                before: serde_json::json!({
                    "status": "revoked",
                    "reason": r.was.reason.map(RevocationReason::describe_code),
                    "reason_code": r.was.reason,
                    "revoked_at": r.was.revoked_at.map(rfc3339),
                }),
                after: serde_json::json!({
                    "status": "revoked",
                    "reason": key_compromise.name(),
                    "reason_code": key_compromise.code(),
                    "revoked_at": rfc3339(r.revoked_at),
                }),
            })
            .collect();
        audit(tx, plan.issuer.id, "reason_change", &plan.actor, &planned).await?;
    }
    if !to_change.is_empty() {
        let before = serde_json::json!({ "status": "good" });
        let after = serde_json::json!({
            "status": "revoked",
            "reason": plan.reason.name(),
            "reason_code": plan.reason.code(),
            "revoked_at": rfc3339(plan.at),
        });
        audit_same(tx, plan.issuer.id, "revoke", &plan.actor, to_change, &before, &after, txn_now).await?;
    }
    Ok(())
}

/// The `jitocsp::audit` log lines of a committed batch: one `info` line per kind of change,
/// one `debug` line per certificate.
fn log_committed(plan: &RevokePlan, version: i64, to_change: &[&Serial], rekeys: &[Rekey<'_>]) {
    let issuer = &plan.issuer;
    if let (Some(first), Some(last)) = (to_change.first(), to_change.last()) {
        tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "revoke", issuer = %issuer.name,
            issuer_id = issuer.id, certificates = to_change.len(), first_serial = %first, last_serial = %last,
            reason = plan.reason.name(), revoked_at = %rfc3339(plan.at), version, "certificates revoked");
    }
    for serial in to_change {
        tracing::debug!(target: "jitocsp::audit", actor = %plan.actor, action = "revoke", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %serial, reason = plan.reason.name(),
            revoked_at = %rfc3339(plan.at), version, "certificate revoked");
    }
    for rekey in rekeys {
        tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "reason_change", issuer = %issuer.name,
            issuer_id = issuer.id, serial = %rekey.serial, reason = plan.reason.name(), revoked_at = %rfc3339(rekey.revoked_at),
            version, "revocation reason changed to keyCompromise");
    }
}

fn serial_bytes<'a>(serials: &[&'a Entry]) -> Vec<&'a [u8]> {
    serials.iter().map(|(s, _)| s.as_bytes()).collect()
}

/// A serial to revoke and where it came from.
type Entry = (Serial, Origin);

/// Fails, naming them, if any of `serials` has no row.
fn check_known(plan: &RevokePlan, serials: &[&Entry], states: &HashMap<Vec<u8>, StatusRow>) -> Result<(), StatusError> {
    let missing: Vec<(Serial, Origin)> =
        serials.iter().filter(|(s, _)| !states.contains_key(s.as_bytes())).map(|e| (*e).clone()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StatusError::UnknownSerials { issuer: plan.issuer.name.clone(), missing })
}

/// The verdict of `plan` on each of `serials` (all known to `states`), with its current state,
/// in their order, up to the first refusal.
fn classify<'p, 's>(
    plan: &RevokePlan,
    serials: &[&'p Entry],
    states: &'s HashMap<Vec<u8>, StatusRow>,
) -> (Vec<(&'p Serial, &'s StatusRow, Verdict)>, Option<StatusError>) {
    let explicit_at = plan.at_given.then_some(plan.at);
    let mut verdicts = Vec::with_capacity(serials.len());
    for (serial, _) in serials {
        let Some(state) = states.get(serial.as_bytes()) else { continue };
        let verdict = match rekey_time(plan.reason, state, explicit_at, serial) {
            Err(refused) => return (verdicts, Some(refused)),
            Ok(Some(revoked_at)) => Verdict::ChangeReason { revoked_at },
            Ok(None) if state.reason.is_none() => Verdict::Revoke,
            Ok(None) => Verdict::AlreadyRevoked(state.clone()),
        };
        verdicts.push((serial, state, verdict));
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

/// Changes the reason of already revoked certificates to keyCompromise, each with its
/// revocation time, inside `tx`.
async fn change_reasons(
    tx: &Transaction<'_>,
    plan: &RevokePlan,
    version: i64,
    rekeys: &[Rekey<'_>],
) -> Result<(), StatusError> {
    let serials: Vec<&[u8]> = rekeys.iter().map(|r| r.serial.as_bytes()).collect();
    let times: Vec<DateTime<Utc>> = rekeys.iter().map(|r| r.revoked_at).collect();
    let code = RevocationReason::KeyCompromise.code();
    let changed = certificates::set_reasons(tx, plan.issuer.id, &serials, &times, code, version)
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
        let (verdicts, refused) = classify(&p, &p.serials.iter().collect::<Vec<_>>(), &states);
        assert!(refused.is_none());
        let verdicts: Vec<Verdict> = verdicts.into_iter().map(|(_, _, v)| v).collect();
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
        let (verdicts, refused) = classify(&p, &p.serials.iter().collect::<Vec<_>>(), &states);
        assert_eq!(verdicts.len(), 1);
        assert!(matches!(refused, Some(StatusError::LaterRevocationTime { .. })));
        // Another reason never changes a revoked certificate.
        let p = plan(&["02"], RevocationReason::Superseded, None);
        assert!(matches!(
            classify(&p, &p.serials.iter().collect::<Vec<_>>(), &states).0[0].2,
            Verdict::AlreadyRevoked(_)
        ));
    }

    /// Tiles keep table order between them and serial order within.
    #[test]
    fn tiles_follow_the_table_and_sort_by_serial_inside() {
        let p = plan(&["05", "01", "04", "02", "03", "06", "00ff"], RevocationReason::KeyCompromise, None);
        let mut located: Vec<(usize, Tid)> =
            (0..p.serials.len()).map(|i| (i, Tid { block: i as u32 / 2, line: 1 + i as u16 % 2 })).collect();
        tile(&mut located, &p, 3);
        let hex: Vec<String> = located.iter().map(|(i, _)| p.serials[*i].0.to_hex()).collect();
        assert_eq!(hex, ["01", "04", "05", "02", "03", "06", "ff"]);
        // Each serial keeps the place its row was found at.
        assert!(located.iter().all(|(i, tid)| tid.block == *i as u32 / 2));
    }
}
