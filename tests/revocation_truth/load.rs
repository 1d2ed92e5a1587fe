//! The long-running check: revocations during continuous load, under each fault in turn.

use std::time::{Duration, Instant};

use super::common::*;
use super::proxy::Proxy;
use super::{
    get_path, revoke, standby_url, status_in, wait_for_standby, ReplayPaused, FEED_DEADLINE, NOTIFICATION_BOUND, SLACK,
};

/// The certificate status in a response, decoded with rasn (fast enough to classify every
/// answer of a load run; a sample is verified by openssl separately).
fn classify(der: &[u8]) -> &'static str {
    use rasn_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};
    let Ok(outer) = rasn::der::decode::<OcspResponse>(der) else { return "undecodable" };
    match outer.status {
        OcspResponseStatus::Successful => {}
        OcspResponseStatus::TryLater => return "tryLater",
        _ => return "error",
    }
    let Some(bytes) = outer.bytes else { return "undecodable" };
    let Ok(basic) = rasn::der::decode::<BasicOcspResponse>(&bytes.response) else { return "undecodable" };
    match basic.tbs_response_data.responses.first().map(|r| &r.cert_status) {
        Some(CertStatus::Good) => "good",
        Some(CertStatus::Revoked(_)) => "revoked",
        Some(CertStatus::Unknown(_)) => "unknown",
        None => "undecodable",
    }
}

/// One answer of the load run.
struct Observed {
    sent: Instant,
    cert: usize,
    status: &'static str,
}

/// The long-running check: GETs for 24 certificates run without pause while certificates are
/// revoked in four conditions: normal, the replica's replay paused, the LISTEN connection
/// blackholed, Redis killed (and each fault then repaired). Every answer is recorded: none of
/// the revoked certificates may be answered "good" to a request sent later than the bound
/// after `admin revoke` returned (the notification bound, or the feed deadline while the feed
/// is dead, plus scheduling slack).
#[test]
fn revocations_under_load_and_faults_never_turn_good_past_the_bound() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Standby, Need::Program("redis-server")]) {
        return;
    }
    let standby = standby_url();
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let certs: Vec<_> = (0..24).map(|i| pki.leaf(&format!("load{i}"), &format!("1a95{i:02x}"))).collect();
    let paths: Vec<String> = certs.iter().map(|c| get_path(&pki, c)).collect();
    let files: Vec<&str> = certs.iter().map(|c| c.to_str().unwrap()).collect();
    let mut args = vec!["admin", "import", "--issuer", issuer.as_str()];
    args.extend_from_slice(&files);
    jitocsp_ok(&args, &[]);
    wait_for_standby(&standby);

    let (proxy, proxied) = Proxy::for_listener(&database_url());
    let mut redis = PrivateRedis::start(free_port());
    let redis_url = redis.url();
    let server = Server::start(&[
        ("DATABASE_URL", &proxied),
        ("JITOCSP_DATABASE_READ_URL", &standby),
        ("REDIS_URL", &redis_url),
        ("JITOCSP_CACHE_LOCAL_ENTRIES", "1000"),
    ]);

    // The load: 4 clients cycling over every certificate until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = server.port;
    let load = {
        let stop = stop.clone();
        let paths = paths.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let clients = (0..4).map(|client| {
                    let stop = stop.clone();
                    let paths = paths.clone();
                    tokio::spawn(async move {
                        let mut seen = Vec::new();
                        let mut i = client;
                        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                            let cert = i % paths.len();
                            let sent = Instant::now();
                            let status = match http(port, "GET", &paths[cert], &[], &[]).await {
                                Ok(response) => classify(&response.body),
                                Err(_) => "no answer",
                            };
                            seen.push(Observed { sent, cert, status });
                            i += 4;
                        }
                        seen
                    })
                });
                let mut all = Vec::new();
                for client in futures_util::future::join_all(clients).await {
                    all.extend(client.unwrap());
                }
                all
            })
        })
    };

    let revoke_one = |i: usize| -> Instant {
        revoke(&issuer, &certs[i], "keyCompromise", &[]);
        Instant::now()
    };
    let mut revoked: Vec<(usize, Instant, Duration)> = Vec::new();
    let pause = Duration::from_millis(1500);
    std::thread::sleep(pause);
    // Normal weather.
    for i in 0..4 {
        revoked.push((i, revoke_one(i), NOTIFICATION_BOUND));
    }
    std::thread::sleep(pause);
    // The replica stops replaying.
    {
        let _paused = ReplayPaused::pause(&standby);
        for i in 4..8 {
            revoked.push((i, revoke_one(i), NOTIFICATION_BOUND));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    std::thread::sleep(pause);
    // The notification link goes silent.
    proxy.blackhole(true);
    for i in 8..12 {
        revoked.push((i, revoke_one(i), FEED_DEADLINE));
    }
    std::thread::sleep(FEED_DEADLINE + SLACK);
    proxy.blackhole(false);
    server.wait_until(Duration::from_secs(30), |s| s.metrics_text().contains("jitocsp_listener_connected 1"));
    // Redis dies and comes back empty.
    redis.stop();
    for i in 12..16 {
        revoked.push((i, revoke_one(i), NOTIFICATION_BOUND));
    }
    std::thread::sleep(pause);
    redis.restart();
    for i in 16..18 {
        revoked.push((i, revoke_one(i), NOTIFICATION_BOUND));
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let observed = load.join().unwrap();

    let mut late = Vec::new();
    for (cert, at, bound) in &revoked {
        let limit = *at + *bound + SLACK;
        for o in observed.iter().filter(|o| o.cert == *cert && o.sent > limit && o.status == "good") {
            late.push((*cert, o.sent.duration_since(*at)));
        }
    }
    let answered: Vec<&Observed> = observed.iter().filter(|o| o.status == "good" || o.status == "revoked").collect();
    let revoked_after: usize = revoked
        .iter()
        .map(|(cert, at, bound)| answered.iter().filter(|o| o.cert == *cert && o.sent > *at + *bound + SLACK).count())
        .sum();
    eprintln!(
        "load run: {} answers ({} good/revoked), {} for revoked certificates past their bound, {} late goods",
        observed.len(),
        answered.len(),
        revoked_after,
        late.len()
    );
    let summary: Vec<String> = revoked
        .iter()
        .filter_map(|(cert, _, _)| {
            let times: Vec<Duration> = late.iter().filter(|(c, _)| c == cert).map(|(_, t)| *t).collect();
            Some(format!("certificate {cert}: {} from {:?} to {:?}", times.len(), times.first()?, times.last()?))
        })
        .collect();
    assert!(late.is_empty(), "good answers past the bound, after the revocation: {summary:?}");
    assert!(revoked_after >= 18, "the run must observe the revoked certificates after their bounds: {revoked_after}");
    // Never revoked: still good at the end.
    for cert in 18..24 {
        assert!(
            observed.iter().rev().find(|o| o.cert == cert).is_some_and(|o| o.status == "good"),
            "certificate {cert} was never revoked"
        );
    }
    // A sample verified by openssl, not only by our decoder.
    assert_eq!(status_in(&pki, &server.get(&paths[9], &[]).body, &certs[9]), "revoked");
}
