//! Redis Cluster (`redis.mode = "cluster"`) under a fault: a primary is killed (SIGKILL) while
//! requests keep coming. Every answer stays correct and none is an error (the cache is only a
//! cache: what cannot be read from Redis is read from Postgres and signed), the replica takes
//! over, `/readyz` says ready again by itself, and Redis serves hits again.
//!
//! It kills a node of the shared test cluster (scripts/services.sh cluster-up) and has the
//! script restart it afterwards (it rejoins as a replica), so it lives in a test binary of its
//! own.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_primary_killed_under_load_costs_no_wrong_answer_and_readiness_recovers() {
    if skip_unless(&[Need::Postgres, Need::Openssl, Need::RedisCluster, Need::Program("redis-cli")]) {
        return;
    }
    let seeds = cluster_seeds();
    let seed_port = seeds[0].rsplit(':').next().unwrap().to_owned();
    // A database of its own: /readyz then judges only this test's issuer.
    let site = Site::with_own_database();
    let pki = Arc::new(Pki::new());
    let issuer = site.add_issuer(&pki);
    let certs: Vec<PathBuf> = (0..24).map(|i| pki.leaf(&format!("c{i}"), &format!("c1{i:02x}"))).collect();
    let paths: Vec<&str> = certs.iter().map(|c| c.to_str().unwrap()).collect();
    site.jitocsp_ok(&[&["admin", "import", "--issuer", &issuer][..], &paths].concat(), &[]);
    let env = cluster_env();
    let server = Arc::new(site.serve(&env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()));
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(certs.iter().map(|c| pki.request(c, "-sha1")).collect());
    for (request, cert) in requests.iter().zip(&certs) {
        let text = openssl_check_response(&pki, &server.post(request).body, cert, "-sha1");
        assert!(text.contains("Response verify OK") && text.contains(": good"), "{text}");
    }
    let (metric, hit) = ("jitocsp_cache_lookups_total", ["tier=\"redis\"", "result=\"hit\""]);
    let hits_before = server.metric(metric, &hit);

    // Load: every certificate in turn, every answer checked by openssl, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (server, requests, stop, wrong, certs, pki) =
            (server.clone(), requests.clone(), stop.clone(), wrong.clone(), certs.clone(), pki.clone());
        std::thread::spawn(move || {
            let mut answered = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = answered % requests.len();
                let response = server.post(&requests[i]);
                let text = openssl_check_response(&pki, &response.body, &certs[i], "-sha1");
                if response.status != 200 || !text.contains("Response verify OK") || !text.contains(": good") {
                    wrong.lock().unwrap().push(format!("answer {answered} (HTTP {}): {text}", response.status));
                }
                answered += 1;
            }
            answered
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let _restart = Restore(&["cluster-up"]);
    let (killed_port, pid) = cluster_primary_other_than(&seed_port);
    kill_9(pid);
    let killed = Instant::now();
    while !cluster_ok(&seed_port) || !cluster_node_failed(&seed_port, &killed_port) {
        assert!(killed.elapsed() < Duration::from_secs(30), "the cluster did not fail over within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let failed_over = killed.elapsed();
    // Ready again by itself, and within a bound an operator can live with.
    let mut last = (0, String::new());
    while killed.elapsed() < failed_over + Duration::from_secs(15) {
        last = metrics_endpoint(&server, "/readyz");
        if last.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last.0, 200, "not ready 15 s after the failover ({failed_over:?} after the kill): {}", last.1);
    eprintln!("failed over {failed_over:?} after the kill; ready again {:?} after the kill", killed.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let answered = load.join().unwrap();
    let wrong = wrong.lock().unwrap();
    assert!(wrong.is_empty(), "{} of {answered} answers were wrong or errors; first: {}", wrong.len(), wrong[0]);
    assert!(answered >= certs.len(), "the load made {answered} requests");

    // Redis serves hits again: every certificate, twice (the first may re-sign and re-cache).
    for _ in 0..2 {
        for request in requests.iter() {
            assert_eq!(server.post(request).status, 200);
        }
    }
    assert!(server.metric(metric, &hit) >= hits_before + certs.len() as f64, "no Redis hits after the failover");
}
