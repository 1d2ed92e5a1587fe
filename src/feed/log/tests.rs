use std::hash::{BuildHasherDefault, Hasher};

use super::*;
use crate::feed::payload::StatusChange;

fn change(issuer_id: i32, serial: &str, revoked: bool, version: i64) -> StatusChange {
    StatusChange { issuer_id, serial: Serial::from_hex(serial).unwrap(), revoked, version }
}

fn serial(n: u64) -> Serial {
    Serial::from_unsigned_be(&(n + 1).to_be_bytes()).unwrap()
}

fn record(log: &ChangeLog<impl BuildHasher>, n: u64, version: i64, heard_at: i64) {
    log.record(&StatusChange { issuer_id: 1, serial: serial(n), revoked: true, version }, heard_at);
}

fn heard(log: &ChangeLog<impl BuildHasher>, n: u64) -> Heard {
    log.heard(1, &serial(n))
}

fn version(log: &ChangeLog<impl BuildHasher>, n: u64) -> Option<i64> {
    heard(log, n).latest().map(|c| c.version)
}

fn freeze(log: &ChangeLog<impl BuildHasher>) {
    log.write().freeze(millis_since_epoch(Instant::now()));
}

#[test]
fn a_read_below_a_heard_change_is_refused_whatever_its_status() {
    let log = ChangeLog::default();
    let serial = Serial::from_hex("abcd").unwrap();
    assert_eq!(log.heard(1, &serial), Heard::default(), "nothing heard: no lock taken, nothing known");
    let before = ReadStart::now();
    log.record(&change(1, "abcd", true, 7), 100);
    let heard = log.heard(1, &serial);
    assert_eq!(heard.cached(0), Verdict::Refused, "read before the change");
    assert_eq!(heard.cached(6), Verdict::Refused, "read one version before the change");
    assert_eq!(heard.cached(7), Verdict::Allowed, "read at the change");
    assert_eq!(heard.cached(9), Verdict::Allowed, "read after a later change of the row");
    assert!(!heard.read_is_current(6, before), "a read begun before the change was heard");
    assert!(!heard.read_is_current(6, ReadStart::UNKNOWN), "a replica's read");
    assert!(heard.read_is_current(7, ReadStart::UNKNOWN));
    assert_eq!(log.heard(2, &serial).cached(0), Verdict::Allowed, "another issuer's certificate");
    assert_eq!(log.heard(1, &Serial::from_hex("abce").unwrap()).cached(0), Verdict::Allowed);
    assert_eq!(heard.latest(), Some(LatestChange { version: 7, heard_at: 100 }));
    assert_eq!(heard.changed_at(), Some(100));
}

#[test]
fn highest_version_wins_and_prune_forgets() {
    let log = ChangeLog::default();
    let serial = Serial::from_hex("01").unwrap();
    log.record(&change(1, "01", true, 3), 100);
    log.record(&change(1, "01", false, 5), 200);
    log.record(&change(1, "01", true, 4), 300);
    assert_eq!(log.summary().remembered, 1);
    assert_eq!(log.heard(1, &serial).cached(4), Verdict::Refused, "unrevoked at version 5");
    log.prune(201);
    assert_eq!(log.summary().remembered, 0);
    assert_eq!(log.heard(1, &serial), Heard::default());
}

#[test]
fn the_highest_version_wins_across_runs_and_the_map() {
    let log = ChangeLog::new(1_000_000);
    record(&log, 1, 3, 100);
    record(&log, 2, 9, 100);
    record(&log, 3, 2, 100);
    freeze(&log);
    record(&log, 1, 5, 200);
    record(&log, 2, 4, 300);
    record(&log, 3, 8, 300);
    freeze(&log);
    record(&log, 3, 6, 400);
    assert_eq!((version(&log, 1), version(&log, 2), version(&log, 3)), (Some(5), Some(9), Some(8)));
    assert_eq!(heard(&log, 1).latest(), Some(LatestChange { version: 5, heard_at: 300 }), "the runs' newest");
    assert_eq!(log.summary().runs, 2);

    log.merge_down_to(1);
    assert_eq!(log.summary(), Summary { remembered: 3, limit: 1_000_000, runs: 1, floor: None });
    assert_eq!((version(&log, 1), version(&log, 2), version(&log, 3)), (Some(5), Some(9), Some(8)));
    assert_eq!(heard(&log, 4), Heard::default());
}

#[test]
fn a_change_recorded_while_a_merge_is_built_is_kept() {
    let log = ChangeLog::new(1_000_000);
    record(&log, 1, 1, 100);
    freeze(&log);
    record(&log, 2, 1, 100);
    freeze(&log);
    let (older, newer) = log.read().pick_merge(0, usize::MAX).unwrap();
    // While the merged run is being built: a newer version of a key in it, a new key frozen
    // into a run of its own, and one left in the map.
    record(&log, 1, 2, 200);
    record(&log, 3, 1, 200);
    freeze(&log);
    record(&log, 4, 1, 200);
    let merged = Arc::new(Run::merge(&older, &newer));
    assert!(log.write().install_merge(&older, &newer, &merged));
    assert_eq!(log.summary().runs, 2);
    let versions: Vec<_> = (1..=4).map(|n| version(&log, n)).collect();
    assert_eq!(versions, [Some(2), Some(1), Some(1), Some(1)]);
    assert!(!log.write().install_merge(&older, &newer, &merged), "the pair is gone: nothing is swapped twice");
}

/// Every certificate gets the same key.
#[derive(Default)]
struct Collide;

impl Hasher for Collide {
    fn finish(&self) -> u64 {
        42
    }

    fn write(&mut self, _: &[u8]) {}
}

#[test]
fn certificates_sharing_a_key_are_answered_with_the_higher_version() {
    let log = ChangeLog::with_keys(1000, BuildHasherDefault::<Collide>::default());
    log.record(&change(1, "0a", true, 7), 100);
    log.record(&change(1, "0b", true, 3), 100);
    let a = log.heard(1, &Serial::from_hex("0a").unwrap());
    let b = log.heard(1, &Serial::from_hex("0b").unwrap());
    assert_eq!(a.cached(6), Verdict::Refused, "never less than a certificate's own change");
    assert_eq!(b.cached(3), Verdict::Refused, "more conservative: read again from Postgres");
    assert_eq!(b.cached(7), Verdict::Allowed);
    assert_eq!(log.summary().remembered, 1);
    assert!(!b.read_is_current(3, ReadStart::UNKNOWN), "a replica's row: read again from the primary");
    std::thread::sleep(Duration::from_millis(2));
    assert!(
        b.read_is_current(3, ReadStart::now()),
        "a primary read begun after the change: signed, not refused for good"
    );
}

#[test]
fn pruning_drops_whole_expired_runs_only() {
    let log = ChangeLog::new(1_000_000);
    record(&log, 1, 1, 100);
    freeze(&log);
    record(&log, 2, 1, 200);
    record(&log, 5, 1, 90);
    freeze(&log);
    record(&log, 3, 1, 300);
    record(&log, 4, 1, 120);
    log.prune(150);
    assert_eq!(version(&log, 1), None, "its run's newest change is past the horizon");
    assert_eq!(version(&log, 5), Some(1), "kept with its run, whose newest change is not");
    assert_eq!(version(&log, 2), Some(1));
    assert_eq!((version(&log, 3), version(&log, 4)), (Some(1), None), "the map forgets entry by entry");
    assert_eq!(log.summary().remembered, 3);
    assert_eq!(log.summary().runs, 1);
    log.prune(i64::MAX);
    assert_eq!(log.summary().remembered, 0);
    assert!(!log.active.load(Ordering::Acquire), "lookups are lock-free again");
}

#[test]
fn merges_keep_a_few_runs_and_every_change() {
    let log = ChangeLog::new(1_000_000);
    for n in 0..100 {
        record(&log, n, n as i64, 100);
        if n % 5 == 4 {
            freeze(&log);
        }
    }
    assert_eq!(log.summary().runs, 20);
    log.merge();
    assert_eq!(log.summary().runs, MAX_RUNS);
    assert_eq!(log.summary().remembered, 100);
    assert!((0..100).all(|n| version(&log, n) == Some(n as i64)));
}

#[test]
fn past_the_limit_the_oldest_changes_raise_a_floor() {
    // A limit of 8: every change is frozen at once, the oldest run is forgotten first.
    let log = ChangeLog::new(8);
    let before_any = ReadStart::now();
    for n in 1..=12 {
        record(&log, n, n as i64, 100 + n as i64);
    }
    let summary = log.summary();
    assert!(summary.remembered <= 8, "{summary:?}");
    let floor = summary.floor.expect("changes were forgotten");
    assert_eq!((floor.version, floor.heard_at), (4, 104));

    let forgotten = heard(&log, 1);
    assert_eq!(forgotten.latest(), None);
    assert_eq!(forgotten.cached(3), Verdict::Confirm, "below the floor");
    assert_eq!(forgotten.cached(4), Verdict::Allowed, "at the floor");
    assert_eq!(forgotten.cached(5), Verdict::Allowed, "above it");
    assert_eq!(forgotten.changed_at(), Some(104), "the newest forgotten change's");
    assert_eq!(heard(&log, 10).cached(9), Verdict::Refused, "remembered: refused, not merely confirmed");
    assert_eq!(heard(&log, 1000).cached(0), Verdict::Allowed, "never changed: not in the filter");

    assert!(!forgotten.read_is_current(3, ReadStart::UNKNOWN), "a replica's row may predate it");
    assert!(!forgotten.read_is_current(3, before_any), "a read begun before it was heard");
    std::thread::sleep(Duration::from_millis(2));
    assert!(forgotten.read_is_current(3, ReadStart::now()), "a primary read begun after it was heard");

    log.prune(104);
    assert!(log.summary().floor.is_some(), "the newest forgotten change is not past the horizon");
    log.prune(105);
    assert_eq!(log.summary().floor, None);
    assert_eq!(heard(&log, 1).cached(0), Verdict::Allowed);
}

#[test]
fn every_forgotten_change_needs_confirming() {
    let log = ChangeLog::new(1000);
    for n in 0..5000 {
        record(&log, n, 1 + n as i64, 100);
    }
    let summary = log.summary();
    assert!(summary.remembered <= 1000, "{summary:?}");
    assert!((0..5000).all(|n| heard(&log, n).cached(0) != Verdict::Allowed), "a Bloom filter never says no wrongly");
}

#[test]
fn the_feed_is_live_only_after_a_recent_proof() {
    let feed = FeedHealth::default();
    assert!(!feed.is_live(), "never proven");
    feed.prove(Instant::now());
    assert!(feed.is_live());
    feed.lost();
    assert!(!feed.is_live(), "lost until proven again");
    feed.prove(Instant::now() - FEED_DEADLINE - Duration::from_millis(1));
    assert!(!feed.is_live(), "the last proof is older than the deadline");
}

#[test]
fn a_replica_is_recent_only_if_it_replayed_a_position_the_primary_reported_lately() {
    let feed = FeedHealth::default();
    assert!(!feed.replica_is_recent(Lsn(u64::MAX)), "no position known yet");
    let now = Instant::now();
    feed.note_primary_position(now - MAX_REPLICA_LAG - Duration::from_secs(1), Lsn(100));
    feed.note_primary_position(now - Duration::from_secs(1), Lsn(200));
    assert!(feed.replica_is_recent(Lsn(200)));
    assert!(feed.replica_is_recent(Lsn(250)));
    assert!(!feed.replica_is_recent(Lsn(150)), "only as far as a position older than the bound");
}

/// What 3,000,000 changes cost, all remembered (docs/benchmarks.md): prints, asserts nothing.
/// Run each footprint test in a process of its own (the allocator keeps freed memory):
/// `cargo test --release --lib footprint_all_remembered -- --ignored --nocapture`
#[test]
#[ignore]
fn footprint_all_remembered() {
    footprint(4_000_000, 3_000_000);
}

/// The same past the default limit, where the oldest are forgotten.
/// `cargo test --release --lib footprint_past_the_default_limit -- --ignored --nocapture`
#[test]
#[ignore]
fn footprint_past_the_default_limit() {
    footprint(DEFAULT_MAX_REMEMBERED, 3_000_000);
}

fn footprint(limit: usize, changes: u64) {
    fn rss_kib(field: &str) -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0)
    }
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    // 16-octet serials, as a CA makes them.
    let serial = |i: u64| {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&mix(i).to_be_bytes());
        bytes[8..].copy_from_slice(&mix(i ^ 0xdead_beef).to_be_bytes());
        bytes[0] = (bytes[0] & 0x7f) | 0x40;
        Serial::from_unsigned_be(&bytes).unwrap()
    };
    let before = rss_kib("VmRSS:");
    let log = ChangeLog::new(limit);
    let started = Instant::now();
    let mut upkeep = Duration::ZERO;
    for i in 0..changes {
        log.record(&StatusChange { issuer_id: 1, serial: serial(i), revoked: true, version: 7 }, 1_000);
        // The upkeep runs once a second; say the burst arrives at 100,000 changes a second.
        if i % 100_000 == 99_999 {
            let t = Instant::now();
            log.upkeep(0);
            upkeep += t.elapsed();
        }
    }
    let recording = started.elapsed() - upkeep;
    let t = Instant::now();
    log.upkeep(0);
    let last_upkeep = t.elapsed();
    let after = rss_kib("VmRSS:");
    let peak = rss_kib("VmHWM:");
    let time = |serials: &[Serial]| {
        let started = Instant::now();
        let found = serials.iter().filter(|s| log.heard(1, s) != Heard::default()).count();
        (started.elapsed().as_nanos() as f64 / serials.len() as f64, found)
    };
    let changed: Vec<Serial> = (0..1_000_000).map(|i| serial(mix(i) % changes)).collect();
    let unchanged: Vec<Serial> = (0..1_000_000).map(|i| serial(changes + i)).collect();
    let (changed_ns, found) = time(&changed);
    let (unchanged_ns, false_hits) = time(&unchanged);
    let summary = log.summary();
    println!(
        "limit {limit}: {changes} changes: RSS +{} MiB ({:.1} B/change; process peak {} MiB above the start), \
         record {:.0} ns/change, upkeep (merges) {:.0} ms in all, then {} us with nothing to do; \
         lookup of a changed certificate {changed_ns:.0} ns ({found} of 1000000 known), of an unchanged one \
         {unchanged_ns:.0} ns ({false_hits} of 1000000 confirmed needlessly); {} remembered in {} runs, floor {:?}",
        (after - before) / 1024,
        (after - before) as f64 * 1024.0 / changes as f64,
        (peak - before) / 1024,
        recording.as_nanos() as f64 / changes as f64,
        upkeep.as_secs_f64() * 1e3,
        last_upkeep.as_micros(),
        summary.remembered,
        summary.runs,
        summary.floor.map(|f| f.version),
    );
}

#[test]
fn recording_a_batch_remembers_what_recording_each_change_does() {
    // A small limit, so that a batch fills the map several times over and pushes changes out.
    let (each, batched) = (ChangeLog::new(100), ChangeLog::new(100));
    let changes: Vec<(u64, i64)> = (0..1_000u64).map(|i| (i % 700, 1 + (i * 7919 % 13) as i64)).collect();
    for &(n, v) in &changes {
        record(&each, n, v, 100);
    }
    let serials: Vec<(Serial, i64)> = changes.iter().map(|&(n, v)| (serial(n), v)).collect();
    for batch in serials.chunks(239) {
        batched.record_all(batch.iter().map(|(serial, version)| (1, serial, *version)), 100);
    }
    let (a, b) = (each.summary(), batched.summary());
    assert_eq!((a.remembered, a.runs), (b.remembered, b.runs));
    assert_eq!(a.floor.map(|f| f.version), b.floor.map(|f| f.version));
    assert!(b.floor.is_some(), "the batches went past the limit");
    for n in 0..700 {
        assert_eq!(version(&each, n), version(&batched, n), "certificate {n}");
        assert_eq!(heard(&each, n).cached(0), heard(&batched, n).cached(0), "certificate {n}");
    }
}
