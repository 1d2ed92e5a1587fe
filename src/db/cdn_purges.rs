//! `cdn_purges`: the CDN purges a status change owes, one row per certificate, with what the
//! hook is given and the delivery bookkeeping (lease, attempts, backoff). The rules are in
//! [`crate::purge::cdn`].

use std::time::Duration;

use tokio_postgres::GenericClient;

/// Records one purge per serial (`serials`, `tags`, `urls` parallel; each URL list joined by
/// newlines), in order. Returns the new rows' ids.
pub async fn insert(
    tx: &impl GenericClient,
    issuer_id: i32,
    serials: &[&[u8]],
    tags: &[String],
    urls: &[String],
    action: &str,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "INSERT INTO cdn_purges (issuer_id, serial, tag, urls, action) \
             SELECT $1, u.serial, u.tag, string_to_array(u.urls, E'\\n'), $5 \
             FROM unnest($2::bytea[], $3::text[], $4::text[]) WITH ORDINALITY AS u(serial, tag, urls, n) \
             ORDER BY u.n RETURNING id",
            &[&issuer_id, &serials, &tags, &urls, &action],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A claimed purge row.
pub struct Claimed {
    pub id: i64,
    pub tag: String,
    pub urls: Vec<String>,
    pub action: String,
    /// Attempts including this one.
    pub attempts: i32,
}

/// Claims due rows (at most `limit`; with `only`, just those ids) for `lease`, counting the
/// attempt; rows another process holds are skipped. Returned in id order.
pub async fn claim(
    client: &impl GenericClient,
    only: Option<&[i64]>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE cdn_purges p SET lease_until = now() + make_interval(secs => $1), attempts = p.attempts + 1 \
             WHERE p.id IN (SELECT id FROM cdn_purges \
                 WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
                   AND ($2::int8[] IS NULL OR id = ANY($2)) \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING p.id, p.tag, p.urls, p.action, p.attempts",
            &[&lease.as_secs_f64(), &only, &limit],
        )
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed { id: r.get(0), tag: r.get(1), urls: r.get(2), action: r.get(3), attempts: r.get(4) })
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Deletes a delivered purge.
pub async fn delete(client: &impl GenericClient, id: i64) -> Result<(), tokio_postgres::Error> {
    client.execute("DELETE FROM cdn_purges WHERE id = $1", &[&id]).await?;
    Ok(())
}

/// Releases a failed purge's lease, recording `error`, and makes it due again after `backoff`.
pub async fn reschedule(
    client: &impl GenericClient,
    id: i64,
    error: &str,
    backoff: Duration,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE cdn_purges SET lease_until = NULL, last_error = $2, \
             next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
            &[&id, &error, &backoff.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// How many purges are owed.
pub async fn count(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one("SELECT count(*) FROM cdn_purges", &[]).await?.get(0))
}
