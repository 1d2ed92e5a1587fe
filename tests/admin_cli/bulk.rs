//! `jitocsp admin revoke` of many certificates: cut into batches (`--batch-size`), each its own
//! transaction with its audit rows and notifications; a revocation that stopped half way is
//! finished by running it again. Each test has a database of its own, so that its audit chain
//! and its notifications are its own.

use std::collections::{BTreeMap, BTreeSet};

use jitocsp::serial::Serial;

use super::common::{skip_unless, Need};
use super::fixture::*;

/// `count` serials, `prefix` followed by a two-byte number, and the stdin import of them.
fn serials(prefix: &str, count: u16) -> (Vec<String>, String) {
    let serials: Vec<String> = (1..=count).map(|i| format!("{prefix}{i:04x}")).collect();
    let import = serials.iter().map(|s| format!("{s},2031-01-01T00:00:00Z\n")).collect();
    (serials, import)
}

/// (serial hex, changed_version) of the revoked certificates of the fixture's issuer.
async fn revoked_versions(f: &Fixture) -> BTreeMap<String, i64> {
    f.db()
        .await
        .query("SELECT serial, changed_version FROM certificates WHERE issuer_id = $1 AND reason IS NOT NULL", &[&f.id])
        .await
        .unwrap()
        .iter()
        .map(|r| (Serial::from_signed_be(r.get::<_, &[u8]>(0)).unwrap().to_hex(), r.get(1)))
        .collect()
}

/// A revocation of 50 serials, 12 of them revoked before (as by an earlier run that was
/// interrupted), in batches of 7: the other 38 are revoked, each with one audit row, one
/// status version per batch, the 12 reported as already revoked; the audit chain verifies;
/// a listener hears every change, a batch per notification rather than one per certificate.
/// (Before batching: one transaction, one version, 38 notifications.)
#[tokio::test(flavor = "multi_thread")]
async fn bulk_revoke_in_batches_audits_each_and_notifies_per_batch() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::with_own_database("bulk").await;
    let (all, import) = serials("7e", 50);
    f.admin(&["import", "--issuer", &f.name, "-"], Some(&import)).ok();
    std::fs::write(f.path("first.txt"), all[..12].join("\n")).unwrap();
    let out = f.admin(
        &[
            "revoke",
            "--issuer",
            &f.name,
            "--serials-file",
            "first.txt",
            "--reason",
            "keyCompromise",
            "--batch-size",
            "5",
        ],
        None,
    );
    assert!(out.ok().stdout.contains("12 revoked, 0 already revoked"));
    let before = revoked_versions(&f).await;
    assert_eq!(before.values().collect::<BTreeSet<_>>().len(), 3, "3 batches of at most 5: {before:?}");

    let mut listener = listen(&f.site.database_url).await;
    std::fs::write(f.path("all.txt"), all.join("\n")).unwrap();
    let out = f
        .admin(
            &[
                "revoke",
                "--issuer",
                &f.name,
                "--serials-file",
                "all.txt",
                "--reason",
                "keyCompromise",
                "--batch-size",
                "7",
            ],
            None,
        )
        .ok();
    assert!(out.stdout.contains("38 revoked, 12 already revoked"), "{}", out.stdout);
    for serial in &all[..12] {
        assert!(out.stdout.contains(&format!("already revoked {serial}: keyCompromise")), "{serial}: {}", out.stdout);
    }
    // Not a terminal: a plain progress line per batch committed, on stderr.
    assert!(out.stderr.contains("revoke: revoking 14/50 (28%)"), "{}", out.stderr);

    let after = revoked_versions(&f).await;
    assert_eq!(after.len(), 50);
    let new: BTreeMap<String, i64> = after.into_iter().filter(|(s, _)| !before.contains_key(s)).collect();
    assert_eq!(new.len(), 38);
    // One version per batch, at most 7 certificates each. Batches follow the table's order,
    // in which the 12 rows changed before now lie last: 6 to 8 batches changed something.
    let mut per_version: BTreeMap<i64, usize> = BTreeMap::new();
    for version in new.values() {
        *per_version.entry(*version).or_default() += 1;
    }
    assert!((6..=8).contains(&per_version.len()), "{per_version:?}");
    assert!(per_version.values().all(|n| *n <= 7), "{per_version:?}");
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 50);
    let out = f.admin(&["audit", "--verify"], None).ok();
    assert!(out.stdout.contains("rows"), "{}", out.stdout);

    // Every change heard, at its row's version, in fewer notifications than certificates.
    let mut heard = BTreeMap::new();
    let mut notifications = 0;
    while heard.len() < new.len() {
        let changes = listener.next_for(f.id).await;
        notifications += 1;
        assert!(changes.revoked);
        for serial in changes.serials {
            assert!(heard.insert(serial.to_hex(), changes.version).is_none(), "{serial} heard twice");
        }
    }
    assert_eq!(heard, new);
    assert_eq!(notifications, per_version.len(), "one notification per batch of 7");
}

/// A batch that fails (here: a trigger refuses one certificate) stops the revocation; the
/// batches before it stay committed, with their audit rows. With the cause gone, the same
/// command finishes the rest and reports the others as already revoked.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_bulk_revoke_is_finished_by_running_it_again() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let f = Fixture::with_own_database("rerun").await;
    let (all, import) = serials("6d", 20);
    f.admin(&["import", "--issuer", &f.name, "-"], Some(&import)).ok();
    std::fs::write(f.path("all.txt"), all.join("\n")).unwrap();
    // Serial 13 is in the third batch of 5.
    f.site.sql(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$; \
         CREATE TRIGGER refuse BEFORE UPDATE ON certificates FOR EACH ROW \
         WHEN (NEW.serial = '\\x{}'::bytea) EXECUTE FUNCTION refuse()",
        all[12]
    ));
    let revoke =
        ["revoke", "--issuer", &f.name, "--serials-file", "all.txt", "--reason", "keyCompromise", "--batch-size", "5"];
    let out = f.admin(&revoke, None).fails(1, &["stopped after", "refused by test", "running the same command again"]);
    let first = revoked_versions(&f).await;
    for serial in &all[..10] {
        assert!(first.contains_key(serial), "{serial} of the batches before the failure: {}", out.stdout);
        assert!(out.stdout.contains(&format!("revoked {serial} (keyCompromise")), "{}", out.stdout);
    }
    for serial in &all[10..15] {
        assert!(!first.contains_key(serial), "{serial} of the failed batch");
    }
    // The batch in flight beside the failed one may have committed; nothing after it started.
    assert!(first.len() == 10 || first.len() == 15, "{first:?}");
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, first.len() as i64);

    f.site.sql("DROP TRIGGER refuse ON certificates");
    let out = f.admin(&revoke, None).ok();
    let expected = format!("{} revoked, {} already revoked", 20 - first.len(), first.len());
    assert!(out.stdout.contains(&expected), "{expected}: {}", out.stdout);
    assert_eq!(revoked_versions(&f).await.len(), 20);
    assert_eq!(f.count("audit_log WHERE issuer_id = $1 AND action = 'revoke'").await, 20);
    f.admin(&["audit", "--verify"], None).ok();
}
