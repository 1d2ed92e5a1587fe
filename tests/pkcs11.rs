//! PKCS#11 signing end to end: a SoftHSM2 token in a temporary directory (scripts/softhsm.sh),
//! keys imported into it, `jitocsp serve` signing through the token, `openssl ocsp` verifying
//! every response against the issuer certificate. Also RSA and P-384 software keys, delegated
//! responder certificates, and a token outage in the middle of a run.

mod common;

use std::time::Duration;

use common::*;

const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const P384: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
const RSA2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

struct Case {
    what: &'static str,
    pki: Pki,
    leaf: std::path::PathBuf,
    algorithm: &'static str,
    delegated: bool,
}

/// P-256, P-384 and RSA-2048 issuer keys in the token; a delegated responder whose key is in
/// the token and one whose key is a file; RSA and P-384 issuer keys as files. `openssl ocsp`
/// verifies each response, and the signature algorithm matches the key.
#[test]
fn responses_signed_through_pkcs11_and_software_keys_verify_with_openssl() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    let hsm = SoftHsm::new();
    let env = hsm.env();
    let env = env_refs(&env);
    let mut cases = Vec::new();
    for (n, (what, key_args, algorithm)) in [
        ("pkcs11 P-256", P256, "ecdsa-with-SHA256"),
        ("pkcs11 P-384", P384, "ecdsa-with-SHA384"),
        ("pkcs11 RSA-2048", RSA2048, "sha256WithRSAEncryption"),
    ]
    .into_iter()
    .enumerate()
    {
        let pki = pki_with_ca(key_args);
        let object = format!("issuer-{n}");
        let id = format!("0{n}");
        hsm.import(&object, &id, &pki.file("ca.key"));
        // The first is found by label, the second by id, the third by both.
        let uri = match n {
            0 => hsm.uri(&object, None),
            1 => hsm.uri(&object, Some(&id)).replace(&format!("object={object};"), ""),
            _ => hsm.uri(&object, Some(&id)),
        };
        let issuer = add_issuer_with(&pki, &uri, None, &env);
        let leaf = pki.leaf("leaf", &format!("a{n}01"));
        jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
        cases.push(Case { what, pki, leaf, algorithm, delegated: false });
    }
    for (what, key_args, algorithm) in
        [("file RSA-2048", RSA2048, "sha256WithRSAEncryption"), ("file P-384", P384, "ecdsa-with-SHA384")]
    {
        let pki = pki_with_ca(key_args);
        let signer = format!("file:{}", pki.file("ca.key").display());
        let issuer = add_issuer_with(&pki, &signer, None, &[]);
        let leaf = pki.leaf("leaf", "b001");
        jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
        cases.push(Case { what, pki, leaf, algorithm, delegated: false });
    }
    {
        // Delegated responder, key in the token (RSA CA, P-256 responder).
        let pki = pki_with_ca(RSA2048);
        let (key, cert) = delegated_responder(&pki, P256);
        hsm.import("responder", "7e57", &key);
        let issuer = add_issuer_with(&pki, &hsm.uri("responder", Some("7e57")), Some(&cert), &env);
        let leaf = pki.leaf("leaf", "c001");
        jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
        cases.push(Case { what: "delegated pkcs11 P-256", pki, leaf, algorithm: "ecdsa-with-SHA256", delegated: true });
    }
    {
        // Delegated responder, key in a file (P-256 CA, P-384 responder).
        let pki = Pki::new();
        let (key, cert) = delegated_responder(&pki, P384);
        let issuer = add_issuer_with(&pki, &format!("file:{}", key.display()), Some(&cert), &[]);
        let leaf = pki.leaf("leaf", "c002");
        jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
        cases.push(Case { what: "delegated file P-384", pki, leaf, algorithm: "ecdsa-with-SHA384", delegated: true });
    }

    // The admin CLI checks the token's key against the certificate.
    let stranger = pki_with_ca(P256);
    let output = jitocsp(
        &[
            "admin",
            "issuer",
            "add",
            "--name",
            &unique("issuer"),
            "--cert",
            stranger.file("ca.pem").to_str().unwrap(),
            "--signer",
            &hsm.uri("issuer-0", None),
        ],
        &env,
    );
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("not the key of"), "{text}");

    let mut server_env = env.clone();
    server_env.push(("JITOCSP_SIGNING_PKCS11_SESSIONS", "2"));
    let server = Server::start(&server_env);
    for case in &cases {
        for digest in ["-sha1", "-sha256"] {
            let text = openssl_ocsp_query(&case.pki, &server, &case.leaf, digest);
            assert!(text.contains("Response verify OK"), "{} {digest}: {text}", case.what);
            assert!(text.contains(&format!("{}: good", case.leaf.display())), "{} {digest}: {text}", case.what);
            assert!(
                text.contains(&format!("Signature Algorithm: {}", case.algorithm)),
                "{} {digest}: expected {}: {text}",
                case.what,
                case.algorithm
            );
            assert_eq!(text.contains("CN=jitocsp test responder"), case.delegated, "{}: {text}", case.what);
        }
    }
    assert!(server.metric("jitocsp_signatures_total", &[]) >= cases.len() as f64, "{}", server.metrics_text());
}

/// The token goes away mid-run (its directory is moved out of SoftHSM's token directory, so
/// the module reports it absent and every session invalid: what an unplugged or unreachable
/// HSM looks like), and comes back. Meanwhile cached answers are still served, misses get
/// tryLater, `/readyz` names the issuer; afterwards signing resumes without a restart.
#[test]
fn token_outage_serves_cached_answers_answers_misses_try_later_and_recovers() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    let hsm = SoftHsm::new();
    let env = hsm.env();
    let env = env_refs(&env);
    let pki = Pki::new();
    hsm.import("issuer", "01", &pki.file("ca.key"));
    let issuer = add_issuer_with(&pki, &hsm.uri("issuer", Some("01")), None, &env);
    let cached = pki.leaf("cached", "d001");
    let missed = pki.leaf("missed", "d002");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cached.to_str().unwrap(), missed.to_str().unwrap()], &[]);

    let mut server_env = env.clone();
    server_env
        .extend_from_slice(&[("JITOCSP_SIGNING_PKCS11_SESSIONS", "2"), ("JITOCSP_SIGNING_PKCS11_RETRY_MS", "200")]);
    let server = Server::start(&server_env);
    let text = openssl_ocsp_query(&pki, &server, &cached, "-sha1");
    assert!(text.contains("Response verify OK") && text.contains(": good"), "{text}");
    let (_, ready) = metrics_endpoint(&server, "/readyz");
    assert!(!ready.contains(&issuer), "{ready}");

    // Pull the token.
    let token = hsm.token_dir();
    let away = hsm.dir.path().join("away");
    std::fs::rename(&token, &away).unwrap();
    server.wait_until(Duration::from_secs(10), |s| {
        let (_, body) = metrics_endpoint(s, "/readyz");
        body.contains(&issuer) && body.contains("PKCS#11")
    });
    let (status, ready) = metrics_endpoint(&server, "/readyz");
    assert_eq!(status, 503, "{ready}");

    // The cached answer is still served, still verifiable; the miss gets tryLater.
    let text = openssl_ocsp_query(&pki, &server, &cached, "-sha1");
    assert!(text.contains("Response verify OK") && text.contains(": good"), "cached during the outage: {text}");
    let text = openssl_ocsp_query(&pki, &server, &missed, "-sha1");
    assert!(text.contains("Responder Error: trylater (3)"), "miss during the outage: {text}");
    let response = server.post(&pki.request(&missed, "-sha256"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, [0x30, 0x03, 0x0a, 0x01, 0x03], "tryLater");
    assert_eq!(response.header("cache-control"), "max-age=0, no-cache");

    // Plug it back: signing resumes without a restart.
    std::fs::rename(&away, &token).unwrap();
    server.wait_until(Duration::from_secs(15), |s| !metrics_endpoint(s, "/readyz").1.contains(&issuer));
    let text = openssl_ocsp_query(&pki, &server, &missed, "-sha1");
    assert!(text.contains("Response verify OK") && text.contains(": good"), "after recovery: {text}");
    let log = server.log_text();
    assert!(log.contains("PKCS#11 signer down") && log.contains("recovered"), "{log}");
    assert!(!log.contains(&hsm.pin), "the PIN must never be logged");
}

/// A token absent at start-up does not stop the responder; the issuer recovers once the token
/// appears, without a restart.
#[test]
fn token_absent_at_start_up_recovers_without_restart() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    let hsm = SoftHsm::new();
    let env = hsm.env();
    let env = env_refs(&env);
    let pki = pki_with_ca(P384);
    hsm.import("issuer", "02", &pki.file("ca.key"));
    let issuer = add_issuer_with(&pki, &hsm.uri("issuer", None), None, &env);
    let leaf = pki.leaf("leaf", "e001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);

    let token = hsm.token_dir();
    let away = hsm.dir.path().join("away");
    std::fs::rename(&token, &away).unwrap();
    let mut server_env = env.clone();
    server_env.push(("JITOCSP_SIGNING_PKCS11_RETRY_MS", "200"));
    let server = Server::start(&server_env);
    assert!(metrics_endpoint(&server, "/readyz").1.contains(&issuer));
    let text = openssl_ocsp_query(&pki, &server, &leaf, "-sha256");
    assert!(text.contains("Responder Error: trylater (3)"), "{text}");

    std::fs::rename(&away, &token).unwrap();
    // A token never seen re-initializes the module at most every 10 s (it may be a stale
    // configuration sharing the module with live tokens); SoftHSM sees the token only then.
    server.wait_until(Duration::from_secs(25), |s| !metrics_endpoint(s, "/readyz").1.contains(&issuer));
    let text = openssl_ocsp_query(&pki, &server, &leaf, "-sha256");
    assert!(text.contains("Response verify OK") && text.contains(": good"), "{text}");
    assert!(text.contains("Signature Algorithm: ecdsa-with-SHA384"), "{text}");
}

/// The sum of the series of metric `name` whose lines contain every one of `labels`, or None if
/// there is none yet. Unlike `Server::metric`, a /metrics that cannot be fetched fails the test
/// instead of reading as 0, which would pass any "stays at 1" or "stays at 0" check.
fn scraped(server: &Server, name: &str, labels: &[&str]) -> Option<f64> {
    let (status, text) = metrics_endpoint(server, "/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .map(|line| line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect(line))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Replaces the file at once, so the responder never reads a half-written PIN (which would cost
/// a login attempt on a real token).
fn write_pin(path: &std::path::Path, pin: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let next = path.with_extension("next");
    // Owner-only, as a PIN file must be (a more open one is refused).
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&next).unwrap();
    file.write_all(format!("{pin}\n").as_bytes()).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// A wrong PIN in the PIN file: the token refuses it once (CKR_PIN_INCORRECT) and it is not
/// presented again however many retry intervals pass, since real tokens lock the user PIN after
/// a few failures. Meanwhile misses get tryLater and `/readyz` names the cause. Once the right
/// PIN is written to the file, the issuer recovers without a restart.
#[test]
fn wrong_pin_is_tried_once_and_again_only_when_the_pin_file_changes() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    let hsm = SoftHsm::new();
    let conf = hsm.conf.to_str().unwrap().to_owned();
    let pki = Pki::new();
    hsm.import("issuer", "03", &pki.file("ca.key"));
    let pin_file = hsm.dir.path().join("user.pin");
    write_pin(&pin_file, &hsm.pin);
    let uri = hsm
        .uri("issuer", Some("03"))
        .replace(&format!("pin-source=env:{}", SoftHsm::PIN_VAR), &format!("pin-source=file:{}", pin_file.display()));
    assert!(uri.contains("pin-source=file:"), "{uri}");
    let env = [("SOFTHSM2_CONF", conf.as_str())];
    let issuer = add_issuer_with(&pki, &uri, None, &env);
    let leaf = pki.leaf("leaf", "f001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);

    let wrong = "wrong-pin-4711";
    write_pin(&pin_file, wrong);
    let server = Server::start(&[("SOFTHSM2_CONF", conf.as_str()), ("JITOCSP_SIGNING_PKCS11_RETRY_MS", "100")]);
    let signer = format!("token={};", hsm.label);
    let attempts = |result: &str| scraped(&server, "jitocsp_pkcs11_logins_total", &[&signer, result]);

    let (status, ready) = metrics_endpoint(&server, "/readyz");
    assert_eq!(status, 503, "{ready}");
    let line = ready.lines().find(|l| l.contains(&issuer)).unwrap_or_else(|| panic!("{ready}"));
    assert!(line.contains("CKR_PIN_INCORRECT") && line.contains("PIN source file:"), "{line}");
    let text = openssl_ocsp_query(&pki, &server, &leaf, "-sha256");
    assert!(text.contains("Responder Error: trylater (3)"), "miss while the PIN is refused: {text}");

    // Many retry intervals pass (each one withholds the login), and still one C_Login in all.
    server.wait_until(Duration::from_secs(20), |s| {
        scraped(s, "jitocsp_pkcs11_logins_withheld_total", &[&signer]).unwrap_or(0.0) >= 20.0
            || attempts("").unwrap_or(0.0) > 1.0
    });
    assert_eq!(attempts(""), Some(1.0), "C_Login attempts with an unchanged wrong PIN");
    assert_eq!(attempts("result=\"pin_incorrect\""), Some(1.0));
    assert!(metrics_endpoint(&server, "/readyz").1.contains("CKR_PIN_INCORRECT"));

    // The operator fixes the file: the next retry logs in, without a restart.
    write_pin(&pin_file, &hsm.pin);
    server.wait_until(Duration::from_secs(15), |s| !metrics_endpoint(s, "/readyz").1.contains(&issuer));
    let text = openssl_ocsp_query(&pki, &server, &leaf, "-sha256");
    assert!(text.contains("Response verify OK") && text.contains(": good"), "after the PIN was fixed: {text}");
    assert_eq!(attempts(""), Some(2.0));
    assert_eq!(attempts("result=\"ok\""), Some(1.0));
    let log = server.log_text();
    assert!(log.contains("CKR_PIN_INCORRECT") && log.contains("recovered"), "{log}");
    assert!(!log.contains(wrong) && !log.contains(&hsm.pin), "a PIN must never be logged");
}

/// Signing throughput, run by scripts/bench-signers.sh (`--ignored`, release build): the
/// PKCS#11 pool with 1, 2, 4 and 8 sessions next to the raw single-thread C_Sign rate of the
/// same token, and the software signers next to `openssl speed ecdsap256`, all in one run.
#[test]
#[ignore = "benchmark: scripts/bench-signers.sh"]
fn bench_signers() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::SoftHsm2]) {
        return;
    }
    use std::sync::Arc;
    use std::time::Instant;

    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use jitocsp::signer::{self, P256Backend, Signer, SignerOptions};

    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let window = Duration::from_secs_f64(seconds);
    let hsm = SoftHsm::new();
    // SoftHSM reads its configuration from the environment of this process.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    std::env::set_var(SoftHsm::PIN_VAR, &hsm.pin);
    let pki = Pki::new();
    hsm.import("bench", "b0", &pki.file("ca.key"));
    // A real ResponseData: signers sign nothing else.
    let request = jitocsp::ocsp::request::parse(&pki.request_serial("b001", "-sha256")).unwrap();
    let now = chrono::Utc::now();
    let answer = jitocsp::ocsp::response::SingleAnswer {
        cert_id: &request.certs[0].cert_id,
        status: jitocsp::ocsp::response::CertStatusAnswer::Good,
        this_update: now,
        next_update: now,
    };
    let tbs = Arc::new(jitocsp::ocsp::response::encode_response_data(&[9; 20], now, &[answer], None).unwrap());
    let message = tbs.as_bytes().to_vec();
    // Signers are opened for the key they must hold.
    let spki = |key: &std::path::Path| {
        run("openssl", &["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER"], pki.path()).stdout
    };
    let mut report = Vec::new();

    // Raw: N threads, each with its own session, C_Sign(CKM_ECDSA) over a SHA-256 digest in a
    // loop, nothing else: what the token can do.
    {
        let context = Pkcs11::new(&hsm.module).unwrap();
        context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
        let slot = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| context.get_token_info(*s).unwrap().label().trim_end() == hsm.label)
            .unwrap();
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&message).to_vec();
        for threads in [1, 2] {
            let started = Instant::now();
            let total: u64 = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let (context, digest, pin) = (&context, &digest, hsm.pin.clone());
                        scope.spawn(move || {
                            let session = context.open_ro_session(slot).unwrap();
                            match session.login(UserType::User, Some(&pin.into())) {
                                Ok(()) => {}
                                Err(cryptoki::error::Error::Pkcs11(
                                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                                    _,
                                )) => {}
                                Err(e) => panic!("login: {e}"),
                            }
                            let key = session
                                .find_objects(&[
                                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                                    Attribute::Label(b"bench".to_vec()),
                                ])
                                .unwrap()[0];
                            let mut count = 0u64;
                            while started.elapsed() < window {
                                session.sign(&Mechanism::Ecdsa, key, digest).unwrap();
                                count += 1;
                            }
                            count
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            report.push(format!(
                "softhsm raw C_Sign P-256, {threads} thread(s):     {:>9.0} sig/s",
                total as f64 / started.elapsed().as_secs_f64()
            ));
        }
        context.finalize().ok();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let rate = |signer: Arc<dyn Signer>, concurrency: usize| -> f64 {
        runtime.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (signer, tbs) = (signer.clone(), tbs.clone());
                    tokio::spawn(async move {
                        let mut count = 0u64;
                        while started.elapsed() < window {
                            signer.sign(&tbs).await.unwrap();
                            count += 1;
                        }
                        count
                    })
                })
                .collect();
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            total as f64 / started.elapsed().as_secs_f64()
        })
    };

    for sessions in [1, 2, 4, 8] {
        let options = SignerOptions {
            pkcs11_sessions: sessions,
            pkcs11_retry: Duration::from_secs(1),
            p256_backend: P256Backend::Ring,
        };
        let signer = signer::open(&hsm.uri("bench", None), &spki(&pki.file("ca.key")), &options).unwrap();
        let per_second = rate(signer, sessions * 2);
        report.push(format!(
            "pkcs11 pool P-256, {sessions} session(s), {:>2} in flight: {per_second:>9.0} sig/s",
            sessions * 2
        ));
    }

    let rsa = pki_with_ca(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let p384 = pki_with_ca(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]);
    for (what, key, backend) in [
        ("software P-256 (ring)", pki.file("ca.key"), P256Backend::Ring),
        ("software P-256 (p256)", pki.file("ca.key"), P256Backend::P256),
        ("software P-384 (ring)", p384.file("ca.key"), P256Backend::Ring),
        ("software RSA-2048 (ring)", rsa.file("ca.key"), P256Backend::Ring),
    ] {
        let options = SignerOptions { pkcs11_sessions: 1, pkcs11_retry: Duration::from_secs(1), p256_backend: backend };
        let signer = signer::open(&format!("file:{}", key.display()), &spki(&key), &options).unwrap();
        report.push(format!("{what:<26} 1 task:      {:>9.0} sig/s", rate(signer.clone(), 1)));
        report.push(format!("{what:<26} 2 tasks:     {:>9.0} sig/s", rate(signer, 2)));
    }

    for (algorithm, multi) in [("ecdsap256", "1"), ("ecdsap256", "2"), ("ecdsap384", "1"), ("rsa2048", "1")] {
        let secs = format!("{}", seconds.ceil() as u64);
        let output = run("openssl", &["speed", "-seconds", &secs, "-multi", multi, algorithm], pki.path());
        let text = String::from_utf8_lossy(&output.stdout);
        // "... sign/s" table: the last line holds sign and verify per second, last two numbers.
        let line =
            text.lines().rev().find(|l| l.contains(algorithm.trim_start_matches("ecdsa")) || l.starts_with("rsa"));
        let sign_per_s =
            line.map(|l| l.split_whitespace().rev().nth(1).unwrap_or("?").to_owned()).unwrap_or_else(|| "?".into());
        report.push(format!("openssl speed {algorithm} -multi {multi}:     {sign_per_s:>9} sig/s"));
    }
    println!("\n{}", report.join("\n"));
}
