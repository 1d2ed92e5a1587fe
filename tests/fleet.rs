//! The fleet, under faults: three responders behind the nginx of deploy/ (a load balancer
//! here: the load is POST, which it never caches), a Redis Cluster of 3 primaries and 3
//! replicas, Postgres with its streaming standby as `database.read_url`. While clients keep
//! asking (every answer checked by `openssl ocsp`), the test revokes certificates, adds an
//! issuer, kills a responder, kills a Redis primary and restarts Postgres.
//!
//! Asserted: no answer is ever a stale "good" (a revoked certificate answered good more than
//! a second after `admin revoke` returned) or a wrong "revoked"; the new issuer is answered by
//! every responder within 5 s; error answers happen only while a fault is in progress, are
//! counted by fault and cause, and stop once it is over.
//!
//! It kills a node of the shared Redis Cluster and restarts the shared Postgres, so it lives
//! in a test binary of its own; both are restored however it ends. The long form repeats it on
//! new fleets: `JITOCSP_FLEET_ROUNDS=10 scripts/test.sh a_fleet_under_faults`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How often each client asks about a certificate never asked before.
const COLD_EVERY: Duration = Duration::from_millis(200);

/// How long after `admin revoke` returns a responder may still answer good.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// nginx from deploy/nginx/jitocsp-cdn.conf with the responders as its upstream, in a
/// temporary directory; killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(origins: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/jitocsp-cdn.conf"))
            .unwrap()
            .replace("/var/cache/nginx/jitocsp", &format!("{d}/cache"))
            .replace("/var/log/nginx/jitocsp", &format!("{d}/jitocsp"))
            .replace("/run/nginx-jitocsp.pid", &format!("{d}/nginx.pid"))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{port}"));
        let upstream: String =
            origins.iter().map(|p| format!("        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n")).collect();
        let example = conf.lines().find(|l| l.contains("server 127.0.0.1:8080 ")).expect("the example upstream line");
        let root = if is_root() { "user root root;\n" } else { "" };
        let conf = format!("daemon off;\n{root}{}", conf.replace(&format!("{example}\n"), &upstream));
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new("nginx").arg("-t").arg("-c").arg(&path).output().expect("nginx");
        assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "nginx does not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, port, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A certificate under load: when its revocation was started, and when it was done (when
/// `admin revoke` returned).
struct Subject {
    pki: Arc<Pki>,
    cert: PathBuf,
    request: Vec<u8>,
    revoking_since: Option<Instant>,
    revoked_since: Option<Instant>,
}

/// What the clients saw, by the fault in progress when each answer arrived.
#[derive(Default)]
struct Tally {
    /// Answers that were wrong: stale good, unexpected revoked, unverifiable.
    wrong: Vec<String>,
    ok: u64,
    /// (fault, cause) -> count.
    errors: BTreeMap<(String, String), u64>,
}

struct Fleet {
    /// Asked over and over: mostly cache hits.
    subjects: Mutex<Vec<Subject>>,
    /// Each asked once (one every [`COLD_EVERY`] per client, while they last): misses, which
    /// need Postgres and a signature.
    cold: Mutex<Vec<Subject>>,
    tally: Mutex<Tally>,
    fault: Mutex<String>,
    stop: AtomicBool,
    port: u16,
}

impl Fleet {
    fn set_fault(&self, fault: &str) {
        *self.fault.lock().unwrap() = fault.to_owned();
    }

    /// One client: asks about every certificate in turn through nginx, checks every answer.
    fn client(self: Arc<Self>, offset: usize) {
        let mut n = offset;
        let mut last_cold = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let cold = if last_cold.elapsed() >= COLD_EVERY {
                last_cold = Instant::now();
                self.cold.lock().unwrap().pop()
            } else {
                None
            };
            let (i, pki, cert, request, revoked_since) = match cold {
                Some(s) => (None, s.pki, s.cert, s.request, None),
                None => {
                    let subjects = self.subjects.lock().unwrap();
                    let i = n % subjects.len();
                    let s = &subjects[i];
                    (Some(i), s.pki.clone(), s.cert.clone(), s.request.clone(), s.revoked_since)
                }
            };
            n += 1;
            let asked = Instant::now();
            let response =
                block_on(http(self.port, "POST", "/", &[("Content-Type", "application/ocsp-request")], &request));
            let fault = self.fault.lock().unwrap().clone();
            // A revoked answer is right once the revocation has started (it may commit
            // before the command returns).
            let revoking = i.is_some_and(|i| self.subjects.lock().unwrap()[i].revoking_since.is_some());
            let verdict = match response {
                Err(e) => Err(format!("no answer: {}", e.kind())),
                Ok(r) if r.status != 200 => Err(format!("HTTP {}", r.status)),
                Ok(r) => Ok(openssl_check_response(&pki, &r.body, &cert, "-sha1")),
            };
            let mut tally = self.tally.lock().unwrap();
            match verdict {
                Err(cause) => *tally.errors.entry((fault, cause)).or_default() += 1,
                Ok(text) if text.contains("Responder Error: ") => {
                    let cause =
                        text.lines().find(|l| l.contains("Responder Error")).unwrap_or_default().trim().to_owned();
                    *tally.errors.entry((fault, cause)).or_default() += 1;
                }
                Ok(text) if !text.contains("Response verify OK") => tally.wrong.push(format!("unverified: {text}")),
                Ok(text) => {
                    let good = text.contains(&format!("{}: good", cert.display()));
                    let revoked = text.contains(&format!("{}: revoked", cert.display()));
                    match revoked_since {
                        Some(since) if good && asked > since + REVOCATION_BOUND => {
                            tally.wrong.push(format!("stale good {:?} after the revocation: {text}", asked - since))
                        }
                        _ if revoked && !revoking => tally.wrong.push(format!("revoked but never revoked: {text}")),
                        _ if good || revoked => tally.ok += 1,
                        _ => tally.wrong.push(format!("neither good nor revoked: {text}")),
                    }
                }
            }
        }
    }
}

fn import(site: &Site, issuer: &str, certs: &[PathBuf]) {
    let paths: Vec<&str> = certs.iter().map(|c| c.to_str().unwrap()).collect();
    site.jitocsp_ok(&[&["admin", "import", "--issuer", issuer][..], &paths].concat(), &[]);
}

fn subjects(pki: &Arc<Pki>, certs: &[PathBuf]) -> Vec<Subject> {
    certs
        .iter()
        .map(|cert| Subject {
            pki: pki.clone(),
            cert: cert.clone(),
            request: pki.request(cert, "-sha1"),
            revoking_since: None,
            revoked_since: None,
        })
        .collect()
}

fn good_everywhere(servers: &[&Server], pki: &Pki, cert: &Path) -> bool {
    servers.iter().all(|s| {
        let text = openssl_check_response(pki, &s.post(&pki.request(cert, "-sha1")).body, cert, "-sha1");
        text.contains("Response verify OK") && text.contains(": good")
    })
}

#[test]
fn a_fleet_under_faults_never_answers_a_stale_good() {
    if skip_unless(&[
        Need::Postgres,
        Need::Standby,
        Need::RedisCluster,
        Need::Openssl,
        Need::Program("nginx"),
        Need::Program("redis-cli"),
    ]) {
        return;
    }
    let _restore = Restore(&["up", "standby-up", "cluster-up"]);
    // The long form: JITOCSP_FLEET_ROUNDS=N runs the whole sequence N times, each on a new
    // fleet (the services restored in between).
    let rounds: u32 = std::env::var("JITOCSP_FLEET_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    for round in 1..=rounds {
        eprintln!("fleet: round {round} of {rounds}");
        one_round();
        if round < rounds {
            for command in ["up", "standby-up", "cluster-up"] {
                services(command);
            }
        }
    }
}

/// Builds a fleet, runs the faults under load, checks every answer.
fn one_round() {
    let site = Site::with_own_database();
    let database = site.database_url.rsplit_once('/').map(|(_, db)| db.to_owned()).unwrap();
    let replica = with_database(&std::env::var("JITOCSP_TEST_STANDBY_URL").unwrap(), &database);
    let seeds = cluster_seeds();
    let mut settings = cluster_env();
    settings.push(("JITOCSP_DATABASE_READ_URL", replica));
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let first = Arc::new(Pki::new());
    let first_issuer = site.add_issuer(&first);
    let certs: Vec<PathBuf> = (0..16).map(|i| first.leaf(&format!("f{i}"), &format!("f1{i:02x}"))).collect();
    import(&site, &first_issuer, &certs);
    let cold: Vec<PathBuf> = (0..300).map(|i| first.leaf(&format!("c{i}"), &format!("c{i:03x}"))).collect();
    import(&site, &first_issuer, &cold);
    let mut servers: Vec<Option<Server>> = (0..3).map(|_| Some(site.serve(&env))).collect();
    let ports: Vec<u16> = servers.iter().flatten().map(|s| s.port).collect();
    let nginx = Nginx::start(&ports);
    let fleet = Arc::new(Fleet {
        subjects: Mutex::new(subjects(&first, &certs)),
        cold: Mutex::new(subjects(&first, &cold)),
        tally: Mutex::default(),
        fault: Mutex::new("none".to_owned()),
        stop: AtomicBool::new(false),
        port: nginx.port,
    });
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn({
                let fleet = fleet.clone();
                move || fleet.client(i * 7)
            })
        })
        .collect();
    let settle = || std::thread::sleep(Duration::from_secs(2));
    settle();

    // Revocations, committed while the fleet answers.
    fleet.set_fault("revocations");
    for i in [1usize, 5, 9] {
        fleet.subjects.lock().unwrap()[i].revoking_since = Some(Instant::now());
        site.jitocsp_ok(
            &[
                "admin",
                "revoke",
                "--issuer",
                &first_issuer,
                "--cert-file",
                certs[i].to_str().unwrap(),
                "--reason",
                "keyCompromise",
            ],
            &[],
        );
        fleet.subjects.lock().unwrap()[i].revoked_since = Some(Instant::now());
    }
    settle();

    // A new issuer: every responder answers its certificates within 5 s.
    fleet.set_fault("issuer added");
    let second = Arc::new(Pki::new());
    let second_issuer = site.add_issuer(&second);
    let second_certs: Vec<PathBuf> = (0..4).map(|i| second.leaf(&format!("s{i}"), &format!("5e{i:02x}"))).collect();
    import(&site, &second_issuer, &second_certs);
    let added = Instant::now();
    let live: Vec<&Server> = servers.iter().flatten().collect();
    while !good_everywhere(&live, &second, &second_certs[0]) {
        assert!(
            added.elapsed() < Duration::from_secs(5),
            "the new issuer is not answered by every responder within 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.subjects.lock().unwrap().extend(subjects(&second, &second_certs));
    settle();

    // A responder killed (SIGKILL): nginx takes it out of the upstream.
    fleet.set_fault("responder killed");
    if let Some(mut server) = servers[1].take() {
        server.kill();
    }
    settle();
    fleet.set_fault("none");
    settle();

    // A Redis primary killed: its replica takes over.
    fleet.set_fault("redis primary killed");
    let (_, primary) = cluster_primary_other_than(seeds[0].rsplit(':').next().unwrap());
    kill_9(primary);
    std::thread::sleep(Duration::from_secs(6));
    fleet.set_fault("none");
    settle();

    // Postgres restarted (the standby reconnects to it by itself).
    fleet.set_fault("postgres restart");
    services("pg-restart");
    let live: Vec<&Server> = servers.iter().flatten().collect();
    let restarted = Instant::now();
    while !live.iter().all(|s| s.metrics_text().contains("jitocsp_listener_connected 1")) {
        assert!(restarted.elapsed() < Duration::from_secs(30), "the feed did not come back after the restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    settle();

    // Over: a quiet period with no error at all.
    fleet.set_fault("after every fault");
    std::thread::sleep(Duration::from_secs(3));
    fleet.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let tally = fleet.tally.lock().unwrap();
    let errors: Vec<String> =
        tally.errors.iter().map(|((fault, cause), n)| format!("{n} x {cause} during {fault}")).collect();
    let cold_left = fleet.cold.lock().unwrap().len();
    eprintln!("fleet: {} answers right ({} first-time), errors: {errors:?}", tally.ok, cold.len() - cold_left);
    assert!(tally.wrong.is_empty(), "{} wrong answers; first: {}", tally.wrong.len(), tally.wrong[0]);
    assert!(tally.ok > 100, "the clients made only {} good answers", tally.ok);
    let unexplained: Vec<&String> = errors
        .iter()
        .filter(|e| {
            e.ends_with("during none")
                || e.ends_with("during after every fault")
                || e.ends_with("during revocations")
                || e.ends_with("during issuer added")
        })
        .collect();
    assert!(unexplained.is_empty(), "errors while no fault was in progress: {unexplained:?}");

    // Every revoked certificate, asked of every live responder directly: revoked.
    let live: Vec<&Server> = servers.iter().flatten().collect();
    for i in [1usize, 5, 9] {
        for server in &live {
            let text = openssl_check_response(
                &first,
                &server.post(&first.request(&certs[i], "-sha1")).body,
                &certs[i],
                "-sha1",
            );
            assert!(text.contains("Response verify OK") && text.contains(": revoked"), "{text}");
        }
    }
}
