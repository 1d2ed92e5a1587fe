//! `cdn_purges`: the CDN purges a status change owes, one row per certificate, with what the
//! hook is given and the delivery bookkeeping (lease, attempts, backoff), claimed and settled
//! a batch at a time. The rules are in [`crate::purge::cdn`].

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

/// Claims the next batch of due rows for `lease`, counting the attempt: in id order, at most
/// `max_batch` rows whose URLs add up to at most `max_batch` (the first row is taken whatever
/// its URLs, so that a row is never stuck); with `only`, just those ids. Rows another process
/// holds are skipped. Returned in id order.
pub async fn claim(
    client: &impl GenericClient,
    only: Option<&[i64]>,
    max_batch: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    // The running URL count is taken over the rows locked here, so the batch is exactly what
    // the hook will get; rows locked but left out are released when the statement ends.
    let rows = client
        .query(
            "WITH due AS ( \
                 SELECT id, cardinality(urls) AS n FROM cdn_purges \
                 WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
                   AND ($2::int8[] IS NULL OR id = ANY($2)) \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED), \
             fit AS ( \
                 SELECT id FROM (SELECT id, row_number() OVER w AS k, sum(n) OVER w AS urls FROM due \
                                 WINDOW w AS (ORDER BY id)) d \
                 WHERE k = 1 OR urls <= $3) \
             UPDATE cdn_purges p SET lease_until = now() + make_interval(secs => $1), attempts = p.attempts + 1 \
             FROM fit WHERE p.id = fit.id \
             RETURNING p.id, p.tag, p.urls, p.action, p.attempts",
            &[&lease.as_secs_f64(), &only, &max_batch],
        )
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed { id: r.get(0), tag: r.get(1), urls: r.get(2), action: r.get(3), attempts: r.get(4) })
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Deletes delivered purges.
pub async fn delete(client: &impl GenericClient, ids: &[i64]) -> Result<(), tokio_postgres::Error> {
    client.execute("DELETE FROM cdn_purges WHERE id = ANY($1)", &[&ids]).await?;
    Ok(())
}

/// Releases failed purges' leases, recording `error`, and makes each due again after its
/// backoff (`ids` and `backoffs` parallel).
pub async fn reschedule(
    client: &impl GenericClient,
    ids: &[i64],
    error: &str,
    backoffs: &[Duration],
) -> Result<(), tokio_postgres::Error> {
    let seconds: Vec<f64> = backoffs.iter().map(Duration::as_secs_f64).collect();
    client
        .execute(
            "UPDATE cdn_purges p SET lease_until = NULL, last_error = $2, \
             next_attempt_at = now() + make_interval(secs => u.backoff) \
             FROM unnest($1::int8[], $3::float8[]) AS u(id, backoff) WHERE p.id = u.id",
            &[&ids, &error, &seconds],
        )
        .await?;
    Ok(())
}

/// How many purges are owed.
pub async fn count(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one("SELECT count(*) FROM cdn_purges", &[]).await?.get(0))
}
