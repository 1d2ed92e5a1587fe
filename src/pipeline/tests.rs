//! The pipeline's decisions, with in-memory fakes for Redis and Postgres and a real signer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use rasn_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

use super::*;
use crate::cache::CacheError;
use crate::config::ResponsesConfig;
use crate::feed::payload::StatusChange;
use crate::issuers::Issuer;
use crate::ocsp::request::tests::encode_request;
use crate::ocsp::response::TbsResponseData;
use crate::ocsp::{request, HashAlgorithm, RevocationReason};
use crate::signer::software::SoftwareSigner;
use crate::signer::{Signer, SignerError};
use crate::store::{CertRecord, Revocation, StatusRead, StoreError};
use crate::x509::certid_hashes;

const CA_DER: &[u8] = include_bytes!("../../tests/fixtures/unit-ca.der");

fn redis_down() -> CacheError {
    CacheError::Redis(::redis::RedisError::from((::redis::ErrorKind::Io, "fake redis is down")))
}

#[derive(Default)]
struct FakeCache {
    values: Mutex<HashMap<String, Bytes>>,
    down: AtomicBool,
}

impl ResponseCache for FakeCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(redis_down());
        }
        Ok(self.values.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &str, value: Bytes, _ttl: Duration) -> Result<(), CacheError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(redis_down());
        }
        self.values.lock().unwrap().insert(key.to_owned(), value);
        Ok(())
    }
    async fn delete(&self, keys: &[String]) -> Result<(), CacheError> {
        let mut values = self.values.lock().unwrap();
        keys.iter().for_each(|k| {
            values.remove(k);
        });
        Ok(())
    }
}

#[derive(Default)]
struct FakeStore {
    rows: Mutex<HashMap<(i32, Serial), CertRecord>>,
    /// When set, what a lagging replica still says (replica reads answer from it).
    replica: Mutex<Option<HashMap<(i32, Serial), CertRecord>>>,
    reads: AtomicUsize,
    primary_reads: AtomicUsize,
    down: AtomicBool,
    /// The next read panics (a bug anywhere in producing a response).
    panic_once: AtomicBool,
}

impl StatusStore for FakeStore {
    async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<StatusRead, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Pool("fake store is down".into()));
        }
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("injected failure while producing a response");
        }
        self.reads.fetch_add(keys.len(), Ordering::SeqCst);
        if from == ReadFrom::Primary {
            self.primary_reads.fetch_add(keys.len(), Ordering::SeqCst);
        }
        let replica = self.replica.lock().unwrap();
        let rows = match (from, replica.as_ref()) {
            (ReadFrom::Replica, Some(replica)) => replica.clone(),
            _ => self.rows.lock().unwrap().clone(),
        };
        Ok(StatusRead { records: keys.iter().map(|k| rows.get(k).cloned()).collect(), replayed: None })
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The real software signer, counted, and switchable off.
struct CountingSigner {
    inner: SoftwareSigner,
    signatures: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

impl Signer for CountingSigner {
    fn algorithm_der(&self) -> &[u8] {
        self.inner.algorithm_der()
    }
    fn public_key_spki_der(&self) -> &[u8] {
        self.inner.public_key_spki_der()
    }
    fn sign<'a>(&'a self, tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        if self.broken.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(SignerError::Sign("token removed".into()))));
        }
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(tbs)
    }
    fn describe(&self) -> &str {
        "counting"
    }
}

struct Harness {
    responder: Arc<Responder<FakeCache, FakeStore>>,
    signatures: Arc<AtomicUsize>,
    signer_broken: Arc<AtomicBool>,
    changes: Arc<ChangeLog>,
}

const ISSUER_ID: i32 = 1;

fn harness(policy: ResponsesConfig) -> Harness {
    let signatures = Arc::new(AtomicUsize::new(0));
    let signer_broken = Arc::new(AtomicBool::new(false));
    let signer = CountingSigner {
        // From memory: a checked-out key file is 0644, which a key file may not be.
        inner: SoftwareSigner::from_pem(
            include_bytes!("../../tests/fixtures/unit-ca.key"),
            crate::signer::P256Backend::default(),
            "file:unit-ca.key",
        )
        .unwrap(),
        signatures: signatures.clone(),
        broken: signer_broken.clone(),
    };
    let issuer = Issuer::with_signer(ISSUER_ID, "unit".into(), CA_DER, None, Arc::new(signer)).unwrap();
    let changes = Arc::new(ChangeLog::default());
    changes.feed.prove(std::time::Instant::now());
    let responder = Arc::new(Responder::new(
        IssuerSet::new(vec![issuer]),
        LocalTier::new(0),
        FakeCache::default(),
        FakeStore::default(),
        changes.clone(),
        SigningLimiter::new(4, 16),
        policy,
        "unit".into(),
    ));
    Harness { responder, signatures, signer_broken, changes }
}

impl Harness {
    /// Imports a certificate (version 0), or changes its status (the next version), as the
    /// admin CLI would in Postgres. Returns the row's version.
    fn add(&self, serial: &str, not_after: DateTime<Utc>, revocation: Option<Revocation>) -> i64 {
        let serial = Serial::from_hex(serial).unwrap();
        let mut rows = self.responder.store.rows.lock().unwrap();
        let version = rows.get(&(ISSUER_ID, serial.clone())).map_or(0, |r| r.version + 1);
        rows.insert((ISSUER_ID, serial), CertRecord { not_after, revocation, version });
        version
    }

    /// Changes a status and lets this responder hear of it, as the listener would.
    fn change(&self, serial: &str, not_after: DateTime<Utc>, revocation: Option<Revocation>) {
        let revoked = revocation.is_some();
        let version = self.add(serial, not_after, revocation);
        let serial = Serial::from_hex(serial).unwrap();
        self.changes.record(&StatusChange { issuer_id: ISSUER_ID, serial, revoked, version }, Utc::now().timestamp());
    }

    fn request(&self, serials: &[&str], nonce: Option<&[u8]>) -> OcspRequest {
        let hashes = certid_hashes(CA_DER).unwrap();
        let serials: Vec<Vec<u8>> = serials.iter().map(|s| Serial::from_hex(s).unwrap().as_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = serials.iter().map(Vec::as_slice).collect();
        let der = encode_request(HashAlgorithm::Sha1, true, &hashes.name_sha1, &hashes.key_sha1, &refs, nonce);
        request::parse(&der).unwrap()
    }

    async fn ask(&self, serial: &str) -> Answer {
        self.responder.answer(self.request(&[serial], None)).await
    }

    fn signatures(&self) -> usize {
        self.signatures.load(Ordering::SeqCst)
    }

    fn reads(&self) -> usize {
        self.responder.store.reads.load(Ordering::SeqCst)
    }
}

fn in_days(days: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::days(days)
}

/// The certStatus values of a successful answer, and its caching.
fn statuses(answer: &Answer) -> (Vec<CertStatus>, Caching) {
    let Answer::Response { caching, .. } = answer else { panic!("expected a response, got {answer:?}") };
    (single_responses(answer).into_iter().map(|r| r.cert_status).collect(), *caching)
}

fn single_responses(answer: &Answer) -> Vec<rasn_ocsp::SingleResponse> {
    let Answer::Response { response, .. } = answer else { panic!("expected a response, got {answer:?}") };
    let outer: OcspResponse = rasn::der::decode(&response.der).unwrap();
    assert_eq!(outer.status, OcspResponseStatus::Successful);
    let basic: BasicOcspResponse = rasn::der::decode(&outer.bytes.unwrap().response).unwrap();
    basic.tbs_response_data.responses
}

fn error(answer: &Answer) -> OcspErrorStatus {
    match answer {
        Answer::Error(status) => *status,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_miss_is_signed_once_then_served_from_redis() {
    let h = harness(ResponsesConfig::default());
    h.add("0a01", in_days(30), None);
    assert_eq!(statuses(&h.ask("0a01").await), (vec![CertStatus::Good], Caching::Public));
    for _ in 0..3 {
        assert_eq!(statuses(&h.ask("0a01").await).0, vec![CertStatus::Good]);
    }
    assert_eq!((h.signatures(), h.reads()), (1, 1));
    assert_eq!(h.responder.cache.values.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn unissued_serials_follow_the_policy_and_are_never_good_or_cached() {
    let h = harness(ResponsesConfig::default());
    assert_eq!(error(&h.ask("0b01").await), OcspErrorStatus::Unauthorized);
    assert_eq!(h.signatures(), 0, "unauthorized costs no signature");

    let h = harness(ResponsesConfig { unissued: UnissuedPolicy::Unknown, ..Default::default() });
    assert_eq!(statuses(&h.ask("0b01").await), (vec![CertStatus::Unknown(())], Caching::NoCache));

    let h = harness(ResponsesConfig { unissued: UnissuedPolicy::Revoked, ..Default::default() });
    let (status, caching) = statuses(&h.ask("0b01").await);
    assert!(matches!(&status[0], CertStatus::Revoked(info) if info.revocation_time.timestamp() == 0));
    assert_eq!(caching, Caching::NoCache);
    assert!(h.responder.cache.values.lock().unwrap().is_empty(), "answers for unissued serials are not cached");
}

#[tokio::test]
async fn expired_certificates_get_unauthorized_after_the_grace() {
    let h = harness(ResponsesConfig::default());
    h.add("0c01", in_days(-1), None);
    assert_eq!(error(&h.ask("0c01").await), OcspErrorStatus::Unauthorized);
    let h = harness(ResponsesConfig { expired_grace: Duration::from_secs(2 * 86400), ..Default::default() });
    h.add("0c01", in_days(-1), None);
    assert_eq!(statuses(&h.ask("0c01").await).0, vec![CertStatus::Good]);
}

#[tokio::test]
async fn revoked_carries_time_and_reason() {
    let h = harness(ResponsesConfig::default());
    let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    h.add("0d01", in_days(30), Some(Revocation { at, reason: RevocationReason::KeyCompromise }));
    let (status, _) = statuses(&h.ask("0d01").await);
    let CertStatus::Revoked(info) = &status[0] else { panic!("{status:?}") };
    assert_eq!(info.revocation_time.timestamp(), 1_700_000_000);
    assert_eq!(info.revocation_reason, Some(rasn_pkix::CrlReason::KeyCompromise));
}

#[tokio::test]
async fn a_change_heard_after_the_read_makes_the_cached_response_unusable() {
    let h = harness(ResponsesConfig::default());
    h.add("0e01", in_days(30), None);
    assert_eq!(statuses(&h.ask("0e01").await).0, vec![CertStatus::Good]);
    // Revoke in the store, but leave the cached "good" in Redis, as a lost purge would.
    h.change("0e01", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::Superseded }));
    h.responder.forget(ISSUER_ID, &Serial::from_hex("0e01").unwrap());
    assert!(matches!(statuses(&h.ask("0e01").await).0[0], CertStatus::Revoked(_)));
    assert_eq!(h.signatures(), 2);
}

#[tokio::test]
async fn without_notifications_cached_responses_are_checked_against_the_store() {
    let h = harness(ResponsesConfig::default());
    h.add("0f01", in_days(30), None);
    statuses(&h.ask("0f01").await);
    h.changes.feed.lost();
    h.add("0f01", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise }));
    assert!(matches!(statuses(&h.ask("0f01").await).0[0], CertStatus::Revoked(_)), "the store disagreed: re-signed");
    assert!(matches!(statuses(&h.ask("0f01").await).0[0], CertStatus::Revoked(_)), "the store agrees: served");
    assert_eq!(h.signatures(), 2);
}

#[tokio::test]
async fn postgres_down_serves_valid_cached_responses_else_try_later() {
    let h = harness(ResponsesConfig::default());
    h.add("1001", in_days(30), None);
    h.add("1002", in_days(30), None);
    statuses(&h.ask("1001").await);
    h.responder.store.down.store(true, Ordering::SeqCst);
    assert_eq!(statuses(&h.ask("1001").await).0, vec![CertStatus::Good], "cached and valid");
    assert_eq!(error(&h.ask("1002").await), OcspErrorStatus::TryLater, "never a guess");
}

#[tokio::test]
async fn a_response_due_for_refresh_is_still_served_when_re_signing_fails() {
    // refresh_after of one second: the first response is due for refresh almost at once.
    let h = harness(ResponsesConfig { refresh_after: Duration::from_secs(1), ..Default::default() });
    h.add("1101", in_days(30), None);
    statuses(&h.ask("1101").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.responder.sweep();
    h.signer_broken.store(true, Ordering::SeqCst);
    // thisUpdate is truncated to the minute, so the response may already be older than 1 s;
    // either way a valid response is served, never tryLater.
    assert_eq!(statuses(&h.ask("1101").await).0, vec![CertStatus::Good]);
    h.signer_broken.store(false, Ordering::SeqCst);
    assert_eq!(statuses(&h.ask("1101").await).0, vec![CertStatus::Good]);
    assert_eq!(h.signatures(), 2, "re-signed once the signer is back");
}

#[tokio::test]
async fn a_broken_signer_means_try_later_for_misses() {
    let h = harness(ResponsesConfig::default());
    h.add("1201", in_days(30), None);
    h.signer_broken.store(true, Ordering::SeqCst);
    assert_eq!(error(&h.ask("1201").await), OcspErrorStatus::TryLater);
}

#[tokio::test]
async fn redis_down_answers_from_the_store() {
    let h = harness(ResponsesConfig::default());
    h.add("1301", in_days(30), None);
    h.responder.cache.down.store(true, Ordering::SeqCst);
    assert_eq!(statuses(&h.ask("1301").await).0, vec![CertStatus::Good]);
}

#[tokio::test]
async fn nonces_are_echoed_only_when_configured_and_only_if_valid() {
    let h = harness(ResponsesConfig { nonce: NoncePolicy::Echo, ..Default::default() });
    h.add("1401", in_days(30), None);
    let nonce = [0x04, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let answer = h.responder.answer(h.request(&["1401"], Some(&nonce))).await;
    let Answer::Response { response, caching, .. } = &answer else { panic!("{answer:?}") };
    assert_eq!(*caching, Caching::NoStore);
    assert!(response.der.windows(nonce.len()).any(|w| w == nonce), "nonce echoed");
    assert!(h.responder.cache.values.lock().unwrap().is_empty(), "never cached");
    let empty = h.responder.answer(h.request(&["1401"], Some(&[0x04, 0x00]))).await;
    assert_eq!(error(&empty), OcspErrorStatus::MalformedRequest);

    let h = harness(ResponsesConfig::default());
    h.add("1401", in_days(30), None);
    let answer = h.responder.answer(h.request(&["1401"], Some(&nonce))).await;
    let Answer::Response { response, caching, .. } = &answer else { panic!("{answer:?}") };
    assert_eq!(*caching, Caching::Public, "ignored nonce: cacheable");
    assert!(!response.der.windows(nonce.len()).any(|w| w == nonce));
}

#[tokio::test]
async fn several_cert_ids_are_answered_in_one_response_with_one_read() {
    let h = harness(ResponsesConfig::default());
    h.add("1501", in_days(30), None);
    h.add("1502", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::Unspecified }));
    let answer = h.responder.answer(h.request(&["1501", "1502"], None)).await;
    let (status, _) = statuses(&answer);
    assert_eq!(status.len(), 2);
    assert_eq!(status[0], CertStatus::Good);
    assert!(matches!(status[1], CertStatus::Revoked(_)));
    assert_eq!((h.signatures(), h.reads()), (1, 2));
    let Answer::Response { response, .. } = &answer else { unreachable!() };
    assert_eq!(response.headers.purge_tag, "unit:1501, unit:1502");
    // One unissued serial among them refuses the whole request (default policy).
    assert_eq!(error(&h.responder.answer(h.request(&["1501", "15ff"], None)).await), OcspErrorStatus::Unauthorized);
}

#[tokio::test]
async fn while_redis_fails_a_fresh_signature_answers_instead_of_new_ones() {
    let h = harness(ResponsesConfig::default());
    h.add("1701", in_days(30), None);
    statuses(&h.ask("1701").await);
    h.responder.cache.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(statuses(&h.ask("1701").await).0, vec![CertStatus::Good]);
    }
    assert_eq!((h.signatures(), h.reads()), (1, 1));
    // ... but never against a status change.
    h.change("1701", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise }));
    assert!(matches!(statuses(&h.ask("1701").await).0[0], CertStatus::Revoked(_)));
}

#[tokio::test]
async fn concurrent_misses_share_one_flight() {
    let h = harness(ResponsesConfig::default());
    h.add("1601", in_days(30), None);
    let asks: Vec<_> = (0..200).map(|_| h.ask("1601")).collect();
    let answers = futures_util::future::join_all(asks).await;
    assert!(answers.iter().all(|a| statuses(a).0 == vec![CertStatus::Good]));
    assert_eq!((h.signatures(), h.reads()), (1, 1));
}

#[tokio::test]
async fn a_replica_behind_a_heard_change_is_bypassed_for_the_primary() {
    let h = harness(ResponsesConfig::default());
    h.add("1801", in_days(30), None);
    // The replica stops replaying; the primary commits a revocation this responder hears of.
    let before = h.responder.store.rows.lock().unwrap().clone();
    *h.responder.store.replica.lock().unwrap() = Some(before);
    h.change("1801", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise }));
    let (status, _) = statuses(&h.ask("1801").await);
    assert!(matches!(status[0], CertStatus::Revoked(_)), "the replica's good was not used: {status:?}");
    assert_eq!(h.responder.store.primary_reads.load(Ordering::SeqCst), 1);
    // The several-CertID path too.
    h.add("1802", in_days(30), None);
    let answer = h.responder.answer(h.request(&["1801", "1802"], None)).await;
    assert!(matches!(statuses(&answer).0[0], CertStatus::Revoked(_)));
}

#[tokio::test]
async fn a_reason_change_makes_the_old_revoked_response_unusable() {
    let h = harness(ResponsesConfig::default());
    let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    h.add("1901", in_days(30), Some(Revocation { at, reason: RevocationReason::Superseded }));
    statuses(&h.ask("1901").await);
    h.change("1901", in_days(30), Some(Revocation { at, reason: RevocationReason::KeyCompromise }));
    let (status, _) = statuses(&h.ask("1901").await);
    let CertStatus::Revoked(info) = &status[0] else { panic!("{status:?}") };
    assert_eq!(info.revocation_reason, Some(rasn_pkix::CrlReason::KeyCompromise), "same status, new reason");
}

#[tokio::test]
async fn a_panic_while_producing_leaves_no_flight_behind() {
    let h = harness(ResponsesConfig::default());
    h.add("2001", in_days(30), None);
    h.responder.store.panic_once.store(true, Ordering::SeqCst);
    assert_eq!(error(&h.ask("2001").await), OcspErrorStatus::InternalError);
    assert_eq!(statuses(&h.ask("2001").await).0, vec![CertStatus::Good], "the next request starts a new flight");
}

#[tokio::test]
async fn revocation_time_never_follows_this_update() {
    let h = harness(ResponsesConfig::default());
    // Revoked now: thisUpdate truncated to the minute would be before it.
    let at = Utc::now();
    h.add("2101", in_days(30), Some(Revocation { at, reason: RevocationReason::Unspecified }));
    let single = single_responses(&h.ask("2101").await).remove(0);
    let CertStatus::Revoked(info) = &single.cert_status else { panic!("{single:?}") };
    assert!(info.revocation_time <= single.this_update, "{:?} > {:?}", info.revocation_time, single.this_update);
    assert_eq!(info.revocation_reason, None, "unspecified is expressed by omitting the reason (BR 7.2.2)");
}
