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

impl FakeStore {
    /// Imports a certificate (version 0), or changes its status (the next version), as the
    /// admin CLI would in Postgres. Returns the row's version.
    fn write(&self, serial: &str, not_after: DateTime<Utc>, revocation: Option<Revocation>) -> i64 {
        let serial = Serial::from_hex(serial).unwrap();
        let mut rows = self.rows.lock().unwrap();
        let version = rows.get(&(ISSUER_ID, serial.clone())).map_or(0, |r| r.version + 1);
        rows.insert((ISSUER_ID, serial), CertRecord { not_after, revocation, version });
        version
    }
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

/// Something that happens while a response is being signed (a status change heard then).
type DuringSigning = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// The real software signer, counted, and switchable off.
struct CountingSigner {
    inner: SoftwareSigner,
    signatures: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    during_signing: DuringSigning,
}

impl Signer for CountingSigner {
    fn algorithm_der(&self) -> &[u8] {
        self.inner.algorithm_der()
    }
    fn public_key_spki_der(&self) -> &[u8] {
        self.inner.public_key_spki_der()
    }
    fn sign<'a>(&'a self, tbs: &'a TbsResponseData) -> BoxFuture<'a, Result<Vec<u8>, SignerError>> {
        if let Some(event) = self.during_signing.lock().unwrap().take() {
            event();
        }
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
    during_signing: DuringSigning,
    changes: Arc<ChangeLog>,
}

const ISSUER_ID: i32 = 1;

fn harness(policy: ResponsesConfig) -> Harness {
    harness_with_local(policy, 0)
}

/// A harness whose local tier (and its raw-request front) holds `local_entries`.
fn harness_with_local(policy: ResponsesConfig, local_entries: usize) -> Harness {
    let signatures = Arc::new(AtomicUsize::new(0));
    let signer_broken = Arc::new(AtomicBool::new(false));
    let during_signing = DuringSigning::default();
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
        during_signing: during_signing.clone(),
    };
    let issuer = Issuer::with_signer(ISSUER_ID, "unit".into(), CA_DER, None, Arc::new(signer)).unwrap();
    let changes = Arc::new(ChangeLog::new(policy.max_remembered_changes));
    changes.feed.prove(std::time::Instant::now());
    let responder = Arc::new(Responder::new(
        IssuerSet::new(vec![issuer]),
        LocalTier::new(local_entries),
        FakeCache::default(),
        FakeStore::default(),
        changes.clone(),
        SigningLimiter::new(4, 16),
        policy,
        "unit".into(),
    ));
    Harness { responder, signatures, signer_broken, during_signing, changes }
}

impl Harness {
    /// Imports a certificate (version 0), or changes its status (the next version), as the
    /// admin CLI would in Postgres. Returns the row's version.
    fn add(&self, serial: &str, not_after: DateTime<Utc>, revocation: Option<Revocation>) -> i64 {
        self.responder.store.write(serial, not_after, revocation)
    }

    /// Changes a status and lets this responder hear of it, as the listener would.
    fn change(&self, serial: &str, not_after: DateTime<Utc>, revocation: Option<Revocation>) {
        let revoked = revocation.is_some();
        let version = self.add(serial, not_after, revocation);
        hear(&self.changes, serial, revoked, version);
    }

    /// While the next signature is made, `serial` is revoked and this responder hears of it,
    /// as if the revocation committed and its notification arrived while the signer worked.
    fn revoke_during_next_signature(&self, serial: &str) {
        let (responder, changes, serial) = (Arc::downgrade(&self.responder), self.changes.clone(), serial.to_owned());
        *self.during_signing.lock().unwrap() = Some(Box::new(move || {
            let Some(responder) = responder.upgrade() else { return };
            let revocation = Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise };
            let version = responder.store.write(&serial, in_days(30), Some(revocation));
            hear(&changes, &serial, true, version);
        }));
    }

    fn request(&self, serials: &[&str], nonce: Option<&[u8]>) -> OcspRequest {
        request::parse(&request_der(HashAlgorithm::Sha1, serials, nonce)).unwrap()
    }

    /// Answers `der`, arrived as `raw`, as the HTTP layer does: from the raw tier if it can,
    /// else decoded.
    async fn ask_raw(&self, der: &[u8], raw: RawRequest<'_>) -> Answer {
        match self.responder.answer_again(raw) {
            Some(answer) => answer,
            None => self.responder.answer(request::parse(der).unwrap(), Some(raw)).await,
        }
    }

    async fn ask(&self, serial: &str) -> Answer {
        self.responder.answer(self.request(&[serial], None), None).await
    }

    fn signatures(&self) -> usize {
        self.signatures.load(Ordering::SeqCst)
    }

    fn reads(&self) -> usize {
        self.responder.store.reads.load(Ordering::SeqCst)
    }
}

/// Records a status change in `changes`, as the listener does for a notification.
fn hear(changes: &ChangeLog, serial: &str, revoked: bool, version: i64) {
    let serial = Serial::from_hex(serial).unwrap();
    changes.record(&StatusChange { issuer_id: ISSUER_ID, serial, revoked, version }, Utc::now().timestamp());
}

/// A request for `serials` (NULL hash parameters), DER.
fn request_der(hash: HashAlgorithm, serials: &[&str], nonce: Option<&[u8]>) -> Vec<u8> {
    let hashes = certid_hashes(CA_DER).unwrap();
    let serials: Vec<Vec<u8>> = serials.iter().map(|s| Serial::from_hex(s).unwrap().as_bytes().to_vec()).collect();
    let refs: Vec<&[u8]> = serials.iter().map(Vec::as_slice).collect();
    let (name, key): (&[u8], &[u8]) = match hash {
        HashAlgorithm::Sha1 => (&hashes.name_sha1, &hashes.key_sha1),
        HashAlgorithm::Sha256 => (&hashes.name_sha256, &hashes.key_sha256),
    };
    encode_request(hash, true, name, key, &refs, nonce)
}

/// The GET path of `der`: standard base64, as browsers send it.
fn get_path(der: &[u8]) -> String {
    use base64::Engine as _;
    format!("/{}", base64::engine::general_purpose::STANDARD.encode(der))
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
async fn a_response_whose_refresh_fails_is_not_served_once_a_change_has_been_heard() {
    // Every response is due for refresh at once: a hit keeps it only as the fallback.
    let h = harness(ResponsesConfig { refresh_after: Duration::ZERO, ..Default::default() });
    h.add("1111", in_days(30), None);
    assert_eq!(statuses(&h.ask("1111").await).0, vec![CertStatus::Good]);
    h.responder.sweep();
    // The refresh reads "good"; while it signs, the revocation is committed and heard, and
    // the signature fails. The cached "good" must not go out as the fallback.
    h.revoke_during_next_signature("1111");
    h.signer_broken.store(true, Ordering::SeqCst);
    assert_eq!(error(&h.ask("1111").await), OcspErrorStatus::TryLater);
    h.signer_broken.store(false, Ordering::SeqCst);
    assert!(matches!(statuses(&h.ask("1111").await).0[0], CertStatus::Revoked(_)));
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
    let answer = h.responder.answer(h.request(&["1401"], Some(&nonce)), None).await;
    let Answer::Response { response, caching, .. } = &answer else { panic!("{answer:?}") };
    assert_eq!(*caching, Caching::NoStore);
    assert!(response.der.windows(nonce.len()).any(|w| w == nonce), "nonce echoed");
    assert!(h.responder.cache.values.lock().unwrap().is_empty(), "never cached");
    let empty = h.responder.answer(h.request(&["1401"], Some(&[0x04, 0x00])), None).await;
    assert_eq!(error(&empty), OcspErrorStatus::MalformedRequest);

    let h = harness(ResponsesConfig::default());
    h.add("1401", in_days(30), None);
    let answer = h.responder.answer(h.request(&["1401"], Some(&nonce)), None).await;
    let Answer::Response { response, caching, .. } = &answer else { panic!("{answer:?}") };
    assert_eq!(*caching, Caching::Public, "ignored nonce: cacheable");
    assert!(!response.der.windows(nonce.len()).any(|w| w == nonce));
}

#[tokio::test]
async fn several_cert_ids_are_answered_in_one_response_with_one_read() {
    let h = harness(ResponsesConfig::default());
    h.add("1501", in_days(30), None);
    h.add("1502", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::Unspecified }));
    let answer = h.responder.answer(h.request(&["1501", "1502"], None), None).await;
    let (status, _) = statuses(&answer);
    assert_eq!(status.len(), 2);
    assert_eq!(status[0], CertStatus::Good);
    assert!(matches!(status[1], CertStatus::Revoked(_)));
    assert_eq!((h.signatures(), h.reads()), (1, 2));
    let Answer::Response { response, .. } = &answer else { unreachable!() };
    assert_eq!(response.headers.purge_tag, "unit:1501,unit:1502");
    // One unissued serial among them refuses the whole request (default policy).
    assert_eq!(
        error(&h.responder.answer(h.request(&["1501", "15ff"], None), None).await),
        OcspErrorStatus::Unauthorized
    );
}

#[tokio::test]
async fn several_cert_ids_are_read_again_when_a_change_is_heard_while_signing() {
    let h = harness(ResponsesConfig::default());
    h.add("1511", in_days(30), None);
    h.add("1512", in_days(30), None);
    // Both read "good"; 1511 is revoked and heard of while the response is signed, so that
    // response may predate the revocation: it is read and signed again.
    h.revoke_during_next_signature("1511");
    let (status, caching) = statuses(&h.responder.answer(h.request(&["1511", "1512"], None), None).await);
    assert!(matches!(status[0], CertStatus::Revoked(_)), "{status:?}");
    assert_eq!((status[1].clone(), caching), (CertStatus::Good, Caching::Public));
    assert_eq!(h.signatures(), 2);
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
    let answer = h.responder.answer(h.request(&["1801", "1802"], None), None).await;
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

#[tokio::test]
async fn past_the_change_log_limit_a_response_older_than_a_forgotten_change_is_confirmed_with_the_store() {
    // A log that remembers 8 changes: a mass revocation of 16 more forgets the first.
    let h = harness(ResponsesConfig { max_remembered_changes: 8, ..Default::default() });
    h.add("2201", in_days(30), None);
    h.add("2202", in_days(30), None);
    assert_eq!(statuses(&h.ask("2201").await).0, vec![CertStatus::Good]);
    assert_eq!(statuses(&h.ask("2202").await).0, vec![CertStatus::Good]);
    // 2201 is revoked; its cached "good" stays in Redis, as after a lost purge.
    let revoked = || Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise });
    h.change("2201", in_days(30), revoked());
    for n in 0..16 {
        let serial = format!("23{n:02x}");
        h.add(&serial, in_days(30), None);
        h.change(&serial, in_days(30), revoked());
    }
    let summary = h.changes.summary();
    assert!(summary.remembered <= 8, "{summary:?}");
    assert_eq!(h.changes.heard(ISSUER_ID, &Serial::from_hex("2201").unwrap()).latest(), None, "forgotten");

    let primary_reads = || h.responder.store.primary_reads.load(Ordering::SeqCst);
    let before = primary_reads();
    assert!(matches!(statuses(&h.ask("2201").await).0[0], CertStatus::Revoked(_)), "not the cached good");
    assert!(primary_reads() > before, "the cached response was checked against the primary");
    assert!(h.changes.summary().floor.is_some(), "forgotten, but not silently");
    assert_eq!(statuses(&h.ask("2202").await).0, vec![CertStatus::Good], "never changed: served");
    // The re-signed revoked response is at the row's version, above the floor: served as is.
    let (signatures, before) = (h.signatures(), primary_reads());
    assert!(matches!(statuses(&h.ask("2201").await).0[0], CertStatus::Revoked(_)));
    assert_eq!((h.signatures(), primary_reads()), (signatures, before));
}

#[tokio::test]
async fn below_the_floor_a_cached_response_is_not_served_when_postgres_cannot_confirm_it() {
    let h = harness(ResponsesConfig { max_remembered_changes: 8, ..Default::default() });
    h.add("2401", in_days(30), None);
    statuses(&h.ask("2401").await);
    h.change("2401", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise }));
    for n in 0..16 {
        h.change(&format!("25{n:02x}"), in_days(30), None);
    }
    assert_eq!(h.changes.heard(ISSUER_ID, &Serial::from_hex("2401").unwrap()).latest(), None, "forgotten");
    h.responder.store.down.store(true, Ordering::SeqCst);
    assert_eq!(error(&h.ask("2401").await), OcspErrorStatus::TryLater, "a known unknown is not served");
}

#[tokio::test]
async fn a_request_seen_before_is_answered_from_its_bytes_until_its_certificate_changes() {
    let h = harness_with_local(ResponsesConfig::default(), 100);
    h.add("2601", in_days(30), None);
    let sha1 = request_der(HashAlgorithm::Sha1, &["2601"], None);
    let sha256 = request_der(HashAlgorithm::Sha256, &["2601"], None);
    let (path, path256) = (get_path(&sha1), get_path(&sha256));
    let encoded = path.replace('+', "%2B").replace('/', "%2F").replacen("%2F", "/", 1);
    let forms = [
        (sha1.as_slice(), RawRequest::Get(path.as_bytes())),
        (sha1.as_slice(), RawRequest::Get(encoded.as_bytes())),
        (sha1.as_slice(), RawRequest::Post(&sha1)),
        (sha256.as_slice(), RawRequest::Get(path256.as_bytes())),
        (sha256.as_slice(), RawRequest::Post(&sha256)),
    ];
    for (der, raw) in forms {
        assert!(h.responder.answer_again(raw).is_none(), "not seen yet: {raw:?}");
        assert_eq!(statuses(&h.ask_raw(der, raw).await), (vec![CertStatus::Good], Caching::Public));
        let again = h.responder.answer_again(raw).unwrap_or_else(|| panic!("seen: {raw:?}"));
        assert_eq!(statuses(&again), (vec![CertStatus::Good], Caching::Public));
    }
    assert_eq!(h.responder.raw_tier_size(), (forms.len(), 1));
    assert_eq!(h.signatures(), 2, "one per CertID form, whatever the spelling");

    // The listener records a change, then drops the copies: between the two, the freshness
    // rule alone refuses every key.
    h.change("2601", in_days(30), Some(Revocation { at: Utc::now(), reason: RevocationReason::KeyCompromise }));
    for (_, raw) in forms {
        assert!(h.responder.answer_again(raw).is_none(), "older than a change heard of: {raw:?}");
    }
    h.responder.forget(ISSUER_ID, &Serial::from_hex("2601").unwrap());
    assert_eq!(h.responder.raw_tier_size(), (0, 0), "every key of the certificate dropped");
    for (der, raw) in forms {
        assert!(matches!(statuses(&h.ask_raw(der, raw).await).0[0], CertStatus::Revoked(_)), "{raw:?}");
        let again = h.responder.answer_again(raw).unwrap_or_else(|| panic!("seen again: {raw:?}"));
        assert!(matches!(statuses(&again).0[0], CertStatus::Revoked(_)), "{raw:?}");
    }
}

#[tokio::test]
async fn only_cacheable_answers_to_one_certid_without_a_nonce_are_kept_by_their_bytes() {
    let h = harness_with_local(ResponsesConfig::default(), 100);
    h.add("2701", in_days(30), None);
    h.add("2702", in_days(30), None);
    let nonce = [0x04, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let with_nonce = request_der(HashAlgorithm::Sha1, &["2701"], Some(&nonce));
    let two = request_der(HashAlgorithm::Sha1, &["2701", "2702"], None);
    let unissued = request_der(HashAlgorithm::Sha1, &["27ff"], None);
    for der in [&with_nonce, &two, &unissued] {
        h.ask_raw(der, RawRequest::Post(der)).await;
        assert!(h.responder.answer_again(RawRequest::Post(der)).is_none());
    }
    assert_eq!(h.responder.raw_tier_size(), (0, 0));

    let h = harness_with_local(ResponsesConfig { nonce: NoncePolicy::Echo, ..Default::default() }, 100);
    h.add("2701", in_days(30), None);
    assert_eq!(statuses(&h.ask_raw(&with_nonce, RawRequest::Post(&with_nonce)).await).1, Caching::NoStore);
    let h = harness_with_local(ResponsesConfig { unissued: UnissuedPolicy::Unknown, ..Default::default() }, 100);
    assert_eq!(statuses(&h.ask_raw(&unissued, RawRequest::Post(&unissued)).await).1, Caching::NoCache);
    assert_eq!(h.responder.raw_tier_size(), (0, 0), "never kept: nonce echoed, or unissued");
}

#[tokio::test]
async fn a_request_seen_before_needs_the_feed_alive_and_its_issuer_still_served() {
    let h = harness_with_local(ResponsesConfig::default(), 100);
    h.add("2801", in_days(30), None);
    let der = request_der(HashAlgorithm::Sha1, &["2801"], None);
    let path = get_path(&der);
    let raw = RawRequest::Get(path.as_bytes());
    h.ask_raw(&der, raw).await;
    assert!(h.responder.answer_again(raw).is_some());
    h.changes.feed.lost();
    assert!(h.responder.answer_again(raw).is_none(), "unproven feed: only confirmed responses are served");
    h.changes.feed.prove(std::time::Instant::now());
    assert!(h.responder.answer_again(raw).is_some());
    h.responder.issuers().replace(IssuerSet::new(Vec::new()));
    assert!(h.responder.answer_again(raw).is_none(), "matched in an issuer set no longer served");
    assert_eq!(error(&h.ask_raw(&der, raw).await), OcspErrorStatus::Unauthorized, "the issuer is retired");
}

/// What a local-tier hit costs in-process, before and after the raw-request tier: the path of
/// a hit before it (percent and base64 decoding, DER decoding, issuer match, CertID-keyed
/// lookup, freshness) and with it (one lookup by the GET path's bytes, freshness), each with
/// the HTTP response built as the listener builds it. Figures in docs/benchmarks.md:
/// `cargo test --release --lib hot_hit_cost -- --ignored --nocapture` (`HOT_HIT_CERTS`, default
/// 20,000, as many certificates as the wrk and bench figures cycle through).
#[test]
#[ignore = "a measurement, not a test"]
fn hot_hit_cost() {
    use futures_util::FutureExt as _;
    const ROUNDS: usize = 10;
    let certs: usize = std::env::var("HOT_HIT_CERTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let h = harness_with_local(ResponsesConfig::default(), 100_000);
    let serials: Vec<String> = (0..certs).map(|i| format!("7{i:07x}")).collect();
    let paths: Vec<String> = serials
        .iter()
        .map(|serial| {
            h.add(serial, in_days(30), None);
            get_path(&request_der(HashAlgorithm::Sha1, &[serial], None))
        })
        .collect();
    runtime.block_on(async {
        for path in &paths {
            let der = crate::http::get::decode_path(path, "").unwrap();
            h.ask_raw(&der, RawRequest::Get(path.as_bytes())).await;
        }
    });
    let http = actix_web::test::TestRequest::default().to_http_request();
    let policy = crate::http::headers::CachePolicy { max_age_cap: None, refresh_after: Duration::from_secs(48 * 3600) };
    let respond = |answer: &Answer| {
        let response = crate::http::headers::respond(answer, &http, Utc::now().timestamp(), policy);
        assert_eq!(response.status(), actix_web::http::StatusCode::OK);
    };
    let time = |label: &str, each: &dyn Fn(&str)| {
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            // The feed's proof of life lasts 5 s; the warm-up (20,000 signatures) takes longer.
            h.changes.feed.prove(std::time::Instant::now());
            let started = std::time::Instant::now();
            paths.iter().for_each(|path| each(path));
            best = best.min(started.elapsed().as_secs_f64() * 1e9 / certs as f64);
        }
        println!("{label:<58} {best:>7.0} ns per hit (best of {ROUNDS} rounds of {certs})");
        best
    };
    let before = time("before: decode, parse, match, CertID-keyed tier, respond", &|path| {
        let der = crate::http::get::decode_path(path, "").unwrap();
        let request = request::parse(&der).unwrap();
        let answer = h.responder.answer(request, None).now_or_never().unwrap();
        respond(&answer);
    });
    let after = time("after: raw tier by the path's bytes, respond", &|path| {
        respond(&h.responder.answer_again(RawRequest::Get(path.as_bytes())).unwrap());
    });
    let lookup = time("after, lookup and freshness only (no response built)", &|path| {
        assert!(h.responder.answer_again(RawRequest::Get(path.as_bytes())).is_some());
    });
    println!(
        "raw tier hit: {:.2}x faster; building the HTTP response is {:.0} ns of it",
        before / after,
        after - lookup
    );
}
