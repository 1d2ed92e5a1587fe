//! Purging on revocation: the keys a real responder wrote are deleted, the change is
//! notified, and with Redis down a pending purge is left for `admin purge` to settle.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jitocsp::serial::Serial;

use super::common::{skip_unless, Need};
use super::fixture::*;

/// A revocation deletes exactly the keys a real responder of the same configuration wrote for
/// that certificate (all four CertID forms) and no other, and notifies with the row's
/// changed_at. The responder is stopped before the revocation, so nothing but the admin CLI can
/// have removed them.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_purges_redis_and_notifies() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::new("purge").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("3c01,2030-01-01T00:00:00Z\n3c02,2030-01-01T00:00:00Z\n")).ok();
    let revoked = off_runtime(|| f.responder_writes(&["3c01"]));
    let bystander = off_runtime(|| f.responder_writes(&["3c02"]));

    // Listen before revoking.
    let mut listener = listen(&env().database_url).await;

    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "3c01"], None).ok();
    assert!(status.stdout.contains("status:      good"), "{}", status.stdout);
    assert!(status.stdout.contains("present, ttl"), "the status command sees the responder's keys: {}", status.stdout);

    let out = f.revoke("3c01", "keyCompromise").ok();
    assert!(out.stdout.contains("purged"), "{}", out.stdout);
    let left = off_runtime(|| f.site.redis_keys());
    assert!(left.is_disjoint(&keys_of(&revoked)), "revoked keys left: {left:?}");
    assert_eq!(left, keys_of(&bystander), "the other certificate keeps its keys");
    assert_eq!(f.count("pending_purge_batches WHERE issuer_id = $1").await, 0);

    // The notification names this certificate, as revoked, at the row's status version.
    let mine = listener.next_for(f.id).await;
    assert_eq!(mine.serials, [Serial::from_hex("3c01").unwrap()]);
    assert!(mine.revoked);
    let version: i64 = db()
        .await
        .query_one(
            "SELECT changed_version FROM certificates WHERE issuer_id = $1 AND serial = $2",
            &[&f.id, &mine.serials[0].as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine.version, version);

    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "3c01"], None).ok();
    for needle in ["status:      revoked", "keyCompromise (1)", "revoked_at:", "changed_at:", "not_after:", "absent"] {
        assert!(status.stdout.contains(needle), "status lacks {needle:?}:\n{}", status.stdout);
    }
    // Status of an unknown serial is not an error; it says so.
    let unknown = f.admin(&["status", "--issuer", &f.name, "--serial", "3cff"], None).ok();
    assert!(unknown.stdout.contains("no row"), "{}", unknown.stdout);
}

/// Redis down at revocation: a pending purge is recorded and the responder's keys stay; `admin
/// purge` fails while Redis is down and, once it is back, deletes exactly those keys and the
/// row. On a database of its own, so that no other test's responder retries the row first.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_with_redis_down_leaves_a_pending_purge() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::with_own_database("redisdown").await;
    f.admin(&["import", "--issuer", &f.name, "-"], Some("4d01,2030-01-01T00:00:00Z\n")).ok();
    let written = off_runtime(|| f.responder_writes(&["4d01"]));

    let started = Instant::now();
    let out = f
        .admin_env(
            &["revoke", "--issuer", &f.name, "--serial", "4d01", "--reason", "keyCompromise"],
            None,
            &[("REDIS_URL", "redis://127.0.0.1:1")],
        )
        .ok();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(out.stderr.contains("pending"), "{}", out.stderr);
    assert_eq!(f.state("4d01").await, Some((Some(1), true, true)));
    let row = f
        .db()
        .await
        .query_one("SELECT attempts, last_error, serials FROM pending_purge_batches WHERE issuer_id = $1", &[&f.id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(row.get::<_, Option<String>>(1).is_some());
    assert_eq!(row.get::<_, Vec<Vec<u8>>>(2), [vec![0x4d, 0x01]]);
    assert_eq!(off_runtime(|| f.site.redis_entries()), written, "nothing could be deleted");

    // Status shows the pending purge; purge with Redis down is an operational failure.
    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "4d01"], None).ok();
    assert!(status.stdout.contains("pending purge: since"), "{}", status.stdout);
    f.admin_env(&["purge", "--issuer", &f.name, "--serial", "4d01"], None, &[("REDIS_URL", "redis://127.0.0.1:1")])
        .fails(1, &["4d01"]);

    // `admin purge` with Redis back settles it.
    f.admin(&["purge", "--issuer", &f.name, "--serial", "4d01"], None).ok();
    assert_eq!(off_runtime(|| f.site.redis_keys()), BTreeSet::new(), "the responder's keys are gone");
    assert_eq!(f.count("pending_purge_batches WHERE issuer_id = $1").await, 0);
}

/// Redis down during a revocation in batches: each batch owes its purges as ONE row holding
/// its serials (sql/0007; before, one `pending_purges` row per certificate), with the failed
/// attempt recorded. `admin purge` settles every batch, and also works off a `pending_purges`
/// row that an older version left. On a database of its own, so that no other test's
/// responder retries the rows first.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_in_batches_owes_one_pending_purge_row_per_batch() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::with_own_database("purgebatch").await;
    let serials: Vec<String> = (1..=13).map(|i| format!("4e{i:02x}")).collect();
    let import: String = serials.iter().map(|s| format!("{s},2030-01-01T00:00:00Z\n")).collect();
    f.admin(&["import", "--issuer", &f.name, "-"], Some(&import)).ok();
    let written = off_runtime(|| f.responder_writes(&["4e01", "4e0c", "4e0d"]));
    std::fs::write(f.path("serials.txt"), serials[..12].join("\n")).unwrap();
    let revoke = [
        "revoke",
        "--issuer",
        &f.name,
        "--serials-file",
        "serials.txt",
        "--reason",
        "keyCompromise",
        "--batch-size",
        "5",
    ];
    let out = f.admin_env(&revoke, None, &[("REDIS_URL", "redis://127.0.0.1:1")]).ok();
    assert!(out.stdout.contains("12 revoked"), "{}", out.stdout);

    let rows = f
        .db()
        .await
        .query(
            "SELECT serials, attempts, last_error IS NOT NULL FROM pending_purge_batches WHERE issuer_id = $1 ORDER BY id",
            &[&f.id],
        )
        .await
        .unwrap();
    let sizes: Vec<usize> = rows.iter().map(|r| r.get::<_, Vec<Vec<u8>>>(0).len()).collect();
    assert_eq!(sizes, [5, 5, 2], "one row per batch");
    // The first purge that failed is recorded; after it the command stops trying (Redis is
    // down) and leaves the rest to the responders.
    let attempts: Vec<(i32, bool)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    assert!(attempts.contains(&(1, true)), "{attempts:?}");
    assert!(attempts.iter().all(|a| *a == (1, true) || *a == (0, false)), "{attempts:?}");
    let mut owed: Vec<String> = rows
        .iter()
        .flat_map(|r| r.get::<_, Vec<Vec<u8>>>(0))
        .map(|s| Serial::from_signed_be(&s).unwrap().to_hex())
        .collect();
    owed.sort();
    assert_eq!(owed, serials[..12]);
    assert_eq!(f.count("pending_purges WHERE issuer_id = $1").await, 0);
    let status = f.admin(&["status", "--issuer", &f.name, "--serial", "4e0c"], None).ok();
    assert!(status.stdout.contains("pending purge: since"), "{}", status.stdout);
    assert_eq!(off_runtime(|| f.site.redis_keys()), keys_of(&written), "nothing could be deleted");

    // A purge an older version recorded its way: one pending_purges row per certificate.
    f.site.sql(&format!("INSERT INTO pending_purges (issuer_id, serial) VALUES ({}, '\\x4e0d')", f.id));
    let out = f.admin(&["purge", "--issuer", &f.name, "--serial", "4e01"], None).ok();
    assert!(out.stdout.contains("retried 12 other pending purge(s): all done"), "{}", out.stdout);
    assert_eq!(off_runtime(|| f.site.redis_keys()), BTreeSet::new(), "the responder's keys are gone");
    assert_eq!(f.count("pending_purge_batches WHERE issuer_id = $1").await, 0);
    assert_eq!(f.count("pending_purges WHERE issuer_id = $1").await, 0);
}
