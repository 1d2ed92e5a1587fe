//! End-to-end: `jitocsp serve` on real Postgres and Redis, checked by external judges
//! (`openssl ocsp`, Python `cryptography`, pkilint).

mod common;

use common::*;

/// Good, revoked (reason and time) and unissued serials, by POST and by GET, with SHA-1 and
/// SHA-256 CertIDs: openssl verifies every response against the issuer.
#[test]
fn openssl_verifies_good_revoked_and_unissued_by_post_and_get() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "1001");
    let revoked = pki.leaf("revoked", "00f0020a");
    let unissued = pki.leaf("unissued", "1003");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap(), revoked.to_str().unwrap()], &[]);
    jitocsp_ok(
        &[
            "admin",
            "revoke",
            "--issuer",
            &issuer,
            "--serial",
            "F0:02:0A",
            "--reason",
            "keyCompromise",
            "--at",
            "2026-01-02T03:04:05Z",
        ],
        &[],
    );
    let server = Server::start(&[]);

    for digest in ["-sha1", "-sha256"] {
        let text = openssl_ocsp_query(&pki, &server, &good, digest);
        assert!(text.contains("Response verify OK"), "{digest}: {text}");
        assert!(text.contains(&format!("{}: good", good.display())), "{digest}: {text}");

        let text = openssl_ocsp_query(&pki, &server, &revoked, digest);
        assert!(text.contains("Response verify OK"), "{digest}: {text}");
        assert!(text.contains(": revoked"), "{digest}: {text}");
        assert!(text.contains("Reason: keyCompromise"), "{digest}: {text}");
        assert!(text.contains("Revocation Time: Jan  2 03:04:05 2026 GMT"), "{digest}: {text}");

        let text = openssl_ocsp_query(&pki, &server, &unissued, digest);
        assert!(text.contains("Responder Error: unauthorized (6)"), "{digest}: {text}");
    }

    // GET through curl, the request base64-encoded raw and URL-encoded.
    for digest in ["-sha1", "-sha256"] {
        for (cert, expected) in [(&good, ": good"), (&revoked, ": revoked")] {
            let der = pki.request(cert, digest);
            let plain = b64(&der);
            let encoded = plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
            for path in [format!("/{plain}"), format!("/{encoded}")] {
                let out = pki.file(&unique("curl"));
                let status = run(
                    "curl",
                    &[
                        "-sS",
                        "--path-as-is",
                        "-o",
                        out.to_str().unwrap(),
                        "-w",
                        "%{http_code}",
                        &format!("{}{path}", server.url()),
                    ],
                    pki.path(),
                );
                assert_eq!(String::from_utf8_lossy(&status.stdout), "200", "{path}");
                let body = std::fs::read(&out).unwrap();
                let text = openssl_check_response(&pki, &body, cert, digest);
                assert!(text.contains("Response verify OK") && text.contains(expected), "{digest} GET {path}: {text}");
            }
        }
    }
}

/// Seconds of the default `responses.validity` (96 h).
const VALIDITY_96H: &str = "345600";

/// A time `hours` from now, RFC 3339 in whole seconds (negative: in the past).
fn hours_from_now(hours: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::hours(hours)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// POSTs `request` and puts the exchange through the judge with `args`.
fn post_judged(pki: &Pki, server: &Server, request: &[u8], args: &[&str]) -> String {
    judge_exchange(pki, request, &server.post(request), args)
}

/// The four CertID forms of one serial: SHA-1 and SHA-256, hash parameters NULL or absent.
fn certid_forms(pki: &Pki, serial_hex: &str) -> Vec<Vec<u8>> {
    let sha1 = pki.request_serial(serial_hex, "-sha1");
    let sha256 = pki.request_serial(serial_hex, "-sha256");
    vec![without_hash_parameters(&sha1), without_hash_parameters(&sha256), sha1, sha256]
}

/// Every answer of the default policy goes through the external judge (Python `cryptography`
/// verifies it against the CA, pkilint finds nothing, every CertID is echoed byte for byte, the
/// HTTP caching headers agree with the DER): good in all four CertID forms by POST and GET,
/// revoked with a reason and time (in every CertID form), on hold, two
/// CertIDs in one request, a nonce that is ignored (default), a delegated responder's
/// signature, and the error responses: malformedRequest, unauthorized for an unissued serial,
/// an expired certificate (no grace) and a foreign issuer.
#[test]
fn the_judge_accepts_every_answer_of_the_default_policy() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2101", "2102", "2103", "2104"], &hours_from_now(24 * 30));
    site().import_serials(&issuer, &["2105"], &hours_from_now(-1));
    let revoke = |serial: &str, reason: &str, at: Option<&str>| {
        let mut args = vec!["admin", "revoke", "--issuer", &issuer, "--serial", serial, "--reason", reason];
        args.extend(at.iter().flat_map(|at| ["--at", *at]));
        jitocsp_ok(&args, &[]);
    };
    // Revoked in the past: a revocation in the current minute is what
    // this_update_is_never_before_the_revocation_time is about.
    let an_hour_ago = hours_from_now(-1);
    revoke("2102", "keyCompromise", Some("2026-01-02T03:04:05Z"));
    revoke("2103", "superseded", Some(&an_hour_ago));
    revoke("2104", "certificateHold", Some(&an_hour_ago));
    let delegated_pki = Pki::new();
    let (key, cert) = delegated_responder(&delegated_pki, P256);
    let delegated = add_issuer_with(&delegated_pki, &format!("file:{}", key.display()), Some(&cert), &[]);
    site().import_serials(&delegated, &["2201"], &hours_from_now(24 * 30));
    let server = Server::start(&[]);

    let good = ["--expect-cert-status", "good", "--validity", VALIDITY_96H];
    for request in certid_forms(&pki, "2101") {
        // Twice: signed, then from Redis.
        post_judged(&pki, &server, &request, &good);
        post_judged(&pki, &server, &request, &good);
        judge_exchange(&pki, &request, &server.get(&format!("/{}", b64(&request)), &[]), &good);
    }
    for request in certid_forms(&pki, "2102") {
        let text = post_judged(
            &pki,
            &server,
            &request,
            &[
                "--expect-cert-status",
                "revoked",
                "--expect-reason",
                "keyCompromise",
                "--expect-revocation-time",
                "2026-01-02T03:04:05Z",
            ],
        );
        assert!(text.contains("reason=key_compromise"), "{text}");
    }
    post_judged(
        &pki,
        &server,
        &pki.request_serial("2103", "-sha1"),
        &["--expect-cert-status", "revoked", "--expect-reason", "superseded", "--expect-revocation-time", &an_hour_ago],
    );
    post_judged(
        &pki,
        &server,
        &pki.request_serial("2104", "-sha256"),
        &["--expect-cert-status", "revoked", "--expect-reason", "certificateHold"],
    );

    // Two CertIDs in one request, answered in one response.
    let two = pki.file("two.req");
    let output = run(
        "openssl",
        &["ocsp", "-issuer", "ca.pem", "-serial", "0x2101", "-serial", "0x2102", "-no_nonce", "-reqout"]
            .into_iter()
            .chain([two.to_str().unwrap()])
            .collect::<Vec<_>>(),
        pki.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let two = std::fs::read(&two).unwrap();
    let text = post_judged(&pki, &server, &two, &["--validity", VALIDITY_96H]);
    assert!(text.contains("status=good") && text.contains("status=revoked"), "{text}");

    // A nonce is ignored by default: not echoed, and the answer stays cacheable.
    let nonced = with_nonce(&pki.request_serial("2101", "-sha1"), &[0x5a; 16]);
    let text = post_judged(&pki, &server, &nonced, &good);
    assert!(text.contains("nonce not echoed"), "{text}");

    // Signed by a delegated responder certificate, included in the response.
    let text = post_judged(&delegated_pki, &server, &delegated_pki.request_serial("2201", "-sha1"), &good);
    assert!(text.contains("signed by delegated responder"), "{text}");

    let garbage = b"garbage".to_vec();
    post_judged(&pki, &server, &garbage, &["--expect-status", "malformedRequest"]);
    for serial in ["21ff", "2105"] {
        post_judged(&pki, &server, &pki.request_serial(serial, "-sha1"), &["--expect-status", "unauthorized"]);
    }
    let stranger = Pki::new();
    post_judged(&pki, &server, &stranger.request_serial("2101", "-sha1"), &["--expect-status", "unauthorized"]);
}

/// `responses.unissued = "unknown"`: a serial without a row is answered unknown, uncacheable.
#[test]
fn the_judge_accepts_unknown_for_an_unissued_serial() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2301"], &hours_from_now(24 * 30));
    let server = Server::start(&[("JITOCSP_RESPONSES_UNISSUED", "unknown")]);
    for request in certid_forms(&pki, "23ff") {
        post_judged(&pki, &server, &request, &["--expect-cert-status", "unknown", "--expect-cache", "no-cache"]);
    }
    post_judged(&pki, &server, &pki.request_serial("2301", "-sha1"), &["--expect-cert-status", "good"]);
}

/// `responses.unissued = "revoked"`: a serial without a row is answered as RFC 6960 section 2.2
/// says (revoked at the epoch, certificateHold, the extended-revoke extension), uncacheable;
/// alone and next to an issued serial.
#[test]
fn the_judge_accepts_extended_revoke_for_an_unissued_serial() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2401"], &hours_from_now(24 * 30));
    let server = Server::start(&[("JITOCSP_RESPONSES_UNISSUED", "revoked")]);
    let unissued = ["--expect-cert-status", "revoked", "--expect-extended-revoke", "--expect-cache", "no-cache"];
    for request in certid_forms(&pki, "24ff") {
        post_judged(&pki, &server, &request, &unissued);
    }
    let both = pki.file("both.req");
    let output = run(
        "openssl",
        &["ocsp", "-issuer", "ca.pem", "-serial", "0x2401", "-serial", "0x24ff", "-no_nonce", "-reqout"]
            .into_iter()
            .chain([both.to_str().unwrap()])
            .collect::<Vec<_>>(),
        pki.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = post_judged(&pki, &server, &std::fs::read(&both).unwrap(), &["--expect-cache", "no-cache"]);
    assert!(text.contains("status=good") && text.contains("revoked_at=1970-01-01T00:00:00+00:00"), "{text}");
}

/// `responses.nonce = "echo"`: nonces of 1, 16, 32 and 128 octets are echoed byte for byte in
/// a fresh, `no-store` response, with one CertID or two; empty and 129-octet nonces are
/// malformedRequest; a request without a nonce is still answered from the cache.
#[test]
fn the_judge_accepts_echoed_nonces() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2501", "2502"], &hours_from_now(24 * 30));
    let at = hours_from_now(-1);
    jitocsp_ok(
        &["admin", "revoke", "--issuer", &issuer, "--serial", "2502", "--reason", "superseded", "--at", &at],
        &[],
    );
    let server = Server::start(&[("JITOCSP_RESPONSES_NONCE", "echo")]);
    let two = pki.file("two.req");
    let output = run(
        "openssl",
        &["ocsp", "-issuer", "ca.pem", "-serial", "0x2501", "-serial", "0x2502", "-no_nonce", "-reqout"]
            .into_iter()
            .chain([two.to_str().unwrap()])
            .collect::<Vec<_>>(),
        pki.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let two = std::fs::read(&two).unwrap();
    for len in [1, 16, 32, 128] {
        let nonce: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        for request in certid_forms(&pki, "2501") {
            let text = post_judged(
                &pki,
                &server,
                &with_nonce(&request, &nonce),
                &["--expect-cert-status", "good", "--expect-nonce", "--expect-cache", "no-store"],
            );
            assert!(text.contains("nonce echoed"), "{text}");
        }
        post_judged(&pki, &server, &with_nonce(&two, &nonce), &["--expect-nonce", "--expect-cache", "no-store"]);
    }
    let plain = pki.request_serial("2501", "-sha1");
    for len in [0, 129] {
        post_judged(&pki, &server, &with_nonce(&plain, &vec![1; len]), &["--expect-status", "malformedRequest"]);
    }
    post_judged(&pki, &server, &plain, &["--expect-cert-status", "good", "--expect-cache", "public"]);
}

/// `responses.expired_grace`: a certificate that expired an hour ago is still answered within
/// a day's grace; one that expired two days ago is unauthorized.
#[test]
fn the_judge_accepts_answers_within_the_expiry_grace() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2601", "2602"], &hours_from_now(-1));
    site().import_serials(&issuer, &["2603"], &hours_from_now(-48));
    let at = hours_from_now(-2);
    jitocsp_ok(
        &["admin", "revoke", "--issuer", &issuer, "--serial", "2602", "--reason", "superseded", "--at", &at],
        &[],
    );
    let server = Server::start(&[("JITOCSP_RESPONSES_EXPIRED_GRACE", "24h")]);
    for request in certid_forms(&pki, "2601") {
        post_judged(&pki, &server, &request, &["--expect-cert-status", "good"]);
        post_judged(&pki, &server, &request, &["--expect-cert-status", "good"]);
    }
    post_judged(
        &pki,
        &server,
        &pki.request_serial("2602", "-sha1"),
        &["--expect-cert-status", "revoked", "--expect-reason", "superseded"],
    );
    post_judged(&pki, &server, &pki.request_serial("2603", "-sha1"), &["--expect-status", "unauthorized"]);
}

/// `responses.max_age_cap` and `responses.validity`: max-age never exceeds the cap, by POST,
/// GET and from the cache, and nextUpdate is thisUpdate + validity.
#[test]
fn the_judge_accepts_the_max_age_cap_and_validity() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2701"], &hours_from_now(24 * 30));
    let server = Server::start(&[
        ("JITOCSP_RESPONSES_MAX_AGE_CAP", "10m"),
        ("JITOCSP_RESPONSES_VALIDITY", "8h"),
        // Under 16 h, BR 4.9.10 wants the refresh half the inclusive interval (8 h + 1 s)
        // before nextUpdate: 4 h would be half a second late.
        ("JITOCSP_RESPONSES_REFRESH_AFTER", "3h 59m"),
    ]);
    let expect =
        ["--expect-cert-status", "good", "--validity", "28800", "--max-age-cap", "600", "--refresh-after", "14340"];
    for request in certid_forms(&pki, "2701") {
        post_judged(&pki, &server, &request, &expect);
        post_judged(&pki, &server, &request, &expect);
        judge_exchange(&pki, &request, &server.get(&format!("/{}", b64(&request)), &[]), &expect);
    }
}

/// SPEC: "Reason unspecified is expressed by omitting revocationReason".
#[test]
fn reason_unspecified_is_omitted() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2a01"], &hours_from_now(24 * 30));
    let at = hours_from_now(-1);
    jitocsp_ok(
        &["admin", "revoke", "--issuer", &issuer, "--serial", "2a01", "--reason", "unspecified", "--at", &at],
        &[],
    );
    let server = Server::start(&[]);
    for request in certid_forms(&pki, "2a01") {
        post_judged(&pki, &server, &request, &["--expect-cert-status", "revoked", "--expect-reason", "none"]);
    }
}

/// SPEC: "thisUpdate may be truncated (to the minute by default) but never before a
/// revocation time it reports": revoked now and asked at once, the answer's thisUpdate is not
/// before its revocationTime (the judge checks revocationTime <= thisUpdate <= producedAt).
#[test]
fn this_update_is_never_before_the_revocation_time() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2b01"], &hours_from_now(24 * 30));
    jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "2b01", "--reason", "keyCompromise"], &[]);
    let server = Server::start(&[]);
    for request in certid_forms(&pki, "2b01") {
        post_judged(&pki, &server, &request, &["--expect-cert-status", "revoked"]);
    }
}

/// SPEC: "HTTP max-age never reaches past that refresh deadline": with the default policy
/// (validity 96 h, refresh after 48 h) and no cap, max-age is at most thisUpdate + 48 h - now.
#[test]
fn max_age_never_reaches_past_the_refresh_deadline() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    site().import_serials(&issuer, &["2801"], &hours_from_now(24 * 30));
    let server = Server::start(&[]);
    let request = pki.request_serial("2801", "-sha1");
    for _ in 0..2 {
        post_judged(&pki, &server, &request, &["--expect-cert-status", "good", "--refresh-after", "172800"]);
    }
}

/// Postgres lost (its database dropped under the running server): a certificate whose answer
/// is cached is still answered from the cache; one that is not gets tryLater, never a guess.
#[test]
fn the_judge_accepts_try_later_when_postgres_is_gone() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let site = Site::with_own_database();
    let pki = Pki::new();
    let issuer = site.add_issuer(&pki);
    site.import_serials(&issuer, &["2901", "2902"], &hours_from_now(24 * 30));
    let server = site.serve(&[]);
    let cached = pki.request_serial("2901", "-sha1");
    post_judged(&pki, &server, &cached, &["--expect-cert-status", "good"]);
    site.drop_database();
    post_judged(&pki, &server, &pki.request_serial("2902", "-sha1"), &["--expect-status", "tryLater"]);
    post_judged(&pki, &server, &cached, &["--expect-cert-status", "good"]);
}

/// Invariant 2: a CertID of an issuer not served here gets unauthorized and costs no
/// signature; bad input gets malformedRequest; oversized bodies are refused.
#[test]
fn unknown_issuer_garbage_truncation_and_oversize() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "3001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(&[]);

    let stranger = Pki::new();
    let foreign = stranger.leaf("foreign", "3001");
    let request = stranger.request(&foreign, "-sha1");
    let response = server.post(&request);
    assert_eq!(response.body, [0x30, 0x03, 0x0a, 0x01, 0x06], "unauthorized");
    assert_eq!(response.header("cache-control"), "max-age=0, no-cache");
    assert_eq!(response.header("content-type"), "application/ocsp-response");
    assert_eq!(server.metric("jitocsp_signatures_total", &[]), 0.0, "no signature for an unknown issuer");

    let malformed = [0x30, 0x03, 0x0a, 0x01, 0x01];
    assert_eq!(server.post(b"").body, malformed);
    assert_eq!(server.post(b"\x30\x82\xff\xff not DER").body, malformed);
    let valid = pki.request(&good, "-sha1");
    for cut in [1, 2, valid.len() / 2, valid.len() - 1] {
        let response = server.post(&valid[..cut]);
        assert_eq!((response.status, response.body.as_slice()), (200, malformed.as_slice()), "truncated at {cut}");
    }
    assert_eq!(server.get("/not-base64!", &[]).body, malformed);
    assert_eq!(server.get("/", &[]).body, malformed);

    let limit = 10 * 1024;
    let response = server.post(&vec![0x30; limit + 1]);
    assert_eq!(response.status, 413);
    assert_eq!(response.body, malformed);
    let response = server.post(&vec![0x30; limit]);
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, malformed.as_slice()),
        "at the limit: parsed, not refused"
    );
    assert_eq!(server.metric("jitocsp_signatures_total", &[]), 0.0);
}

/// HEAD answers as GET without a body; a matching validator gets 304.
#[test]
fn head_and_conditional_get() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    head_and_conditional_get_with(&[]);
}

/// The same from the raw-request tier: every request after the first is answered from its
/// bytes, with the same headers, validators and 304s.
#[test]
fn head_and_conditional_get_from_request_bytes() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let server = head_and_conditional_get_with(&[("JITOCSP_CACHE_LOCAL_ENTRIES", "1000")]);
    let hits = server.metric("jitocsp_cache_lookups_total", &["tier=\"local\"", "key=\"request\""]);
    assert!(hits >= 1.0, "no request was answered from its bytes");
}

fn head_and_conditional_get_with(env: &[(&str, &str)]) -> Server {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "4001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(env);
    let path = format!("/{}", b64(&pki.request(&good, "-sha1")));

    let before_get = std::time::Instant::now();
    let get = server.get(&path, &[]);
    assert_eq!(get.status, 200);
    let text = openssl_check_response(&pki, &get.body, &good, "-sha1");
    assert!(text.contains(": good") && text.contains("Response verify OK"), "{text}");
    let etag = get.header("etag").to_owned();
    assert_eq!(etag.len(), 66, "quoted hex SHA-256: {etag}");
    assert!(get.header("cache-control").starts_with("max-age="));
    assert!(get.header("cache-control").ends_with(", public, no-transform, must-revalidate"));
    assert!(get.header("last-modified").ends_with(" GMT") && get.header("expires").ends_with(" GMT"));
    assert_eq!(get.header("cache-tag"), format!("{issuer}:4001"));

    let head = block_on(http(server.port, "HEAD", &path, &[], &[])).unwrap();
    let seconds_between = before_get.elapsed().as_secs() + 1;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in ["etag", "last-modified", "expires", "content-type"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    // max-age counts down to a fixed deadline: the HEAD, sent later, may see it a whole
    // second (or more, on a slow machine) closer, and never further away.
    let max_age = |r: &HttpResponse| -> u64 {
        let value = r.header("cache-control").trim_start_matches("max-age=");
        value.split(',').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("max-age in {value:?}"))
    };
    let (get_age, head_age) = (max_age(&get), max_age(&head));
    assert!(
        head_age <= get_age && get_age - head_age <= seconds_between,
        "HEAD max-age {head_age} vs GET max-age {get_age}, {seconds_between} s apart at most"
    );
    let directives = |r: &HttpResponse| r.header("cache-control").split_once(',').map(|(_, rest)| rest.to_owned());
    assert_eq!(directives(&head), directives(&get));

    let not_modified = server.get(&path, &[("If-None-Match", &etag)]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let last_modified = get.header("last-modified").to_owned();
    assert_eq!(server.get(&path, &[("If-Modified-Since", &last_modified)]).status, 304);
    assert_eq!(server.get(&path, &[("If-None-Match", "\"something-else\"")]).status, 200);
    // Conditional headers apply to GET and HEAD only, however often a POST is seen.
    let request = pki.request(&good, "-sha1");
    for _ in 0..2 {
        let headers = [("Content-Type", "application/ocsp-request"), ("If-None-Match", etag.as_str())];
        let post = block_on(http(server.port, "POST", "/", &headers, &request)).unwrap();
        assert_eq!((post.status, post.header("etag")), (200, etag.as_str()));
    }
    server
}

/// A serial (hex) and openssl's SHA-256 request for it, whose base64 has '+', '/' and '='.
/// Only the serial varies between candidates (the CertID hashes are the CA's), so serials of
/// 8, 9 and 10 octets (every length modulo 3, so padding occurs) with pseudo-random octets are
/// spliced into one openssl request until one fits; openssl then makes the real request.
fn request_with_plus_slash_and_padding(pki: &Pki) -> (String, Vec<u8>) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [8usize, 9, 10] {
        let template = pki.request_serial(&format!("1{}", "0".repeat(2 * len - 1)), "-sha256");
        let at = template.len() - len;
        assert_eq!(&template[at - 2..at], &[0x02, len as u8], "the serial ends the request");
        for _ in 0..100_000 {
            let mut candidate = template.clone();
            for byte in &mut candidate[at..] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            candidate[at] = 0x10 | (candidate[at] & 0x6f); // positive, no leading zero octet
            let plain = b64(&candidate);
            if plain.contains('+') && plain.contains('/') && plain.ends_with('=') {
                let serial = hex::encode(&candidate[at..]);
                let der = pki.request_serial(&serial, "-sha256");
                assert_eq!(der, candidate, "openssl makes the request searched for");
                return (serial, der);
            }
        }
    }
    panic!("no serial of 8 to 10 octets whose request's base64 has '+', '/' and '='");
}

/// An issuer of `pki` and a certificate imported there (good for 30 days) whose SHA-256
/// request's base64 has '+', '/' and '=': (issuer, serial, request).
fn imported_with_plus_slash_and_padding(pki: &Pki) -> (String, String, Vec<u8>) {
    let issuer = add_issuer(pki);
    let (serial, der) = request_with_plus_slash_and_padding(pki);
    site().import_serials(&issuer, &[&serial], &hours_from_now(24 * 30));
    (issuer, serial, der)
}

/// Every spelling of a GET path that clients and proxies produce reaches the same answer, for
/// a request whose base64 has '+', '/' and '=' padding: the characters that break.
#[test]
fn get_path_encodings() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let (_, serial, der) = imported_with_plus_slash_and_padding(&pki);
    let server = Server::start(&[("JITOCSP_SERVER_PATH_PREFIX", "/ocsp")]);
    let plain = b64(&der);
    let variants = [
        format!("/ocsp/{plain}"),
        format!("/ocsp//{plain}"),
        format!("/ocsp/{}", plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")),
        format!("/ocsp/{}", plain.replace('+', "%2B")),
        format!("/ocsp/{}", plain.replace('/', "%2F")),
        format!("/ocsp/{}", plain.replace('+', "%20")),
        format!("/ocsp/{}", plain.trim_end_matches('=')),
    ];
    for path in &variants[1..] {
        assert_ne!(path, &variants[0], "every variant spells the request differently");
    }
    for path in variants {
        let response = server.get(&path, &[]);
        let text = judge_exchange(&pki, &der, &response, &["--expect-cert-status", "good"]);
        assert!(text.contains(&format!("serial={serial}")), "{path}: {text}");
    }
    let response = server.get(&format!("/{plain}"), &[]);
    assert_eq!(response.body, [0x30, 0x03, 0x0a, 0x01, 0x01], "outside the prefix");
}

/// The raw-request tier (issue 11): a certificate asked about in every form clients use (GET
/// in standard base64 and percent-encoded, SHA-1 with and without hash parameters, SHA-256,
/// POST) is answered from the request's bytes once seen, and `admin revoke` drops every one of
/// those keys at once: the tier ends up empty, not merely refused by the freshness rule, and
/// every form then answers revoked.
#[test]
fn a_revocation_drops_every_request_form_kept_by_its_bytes() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let (issuer, serial, sha256) = imported_with_plus_slash_and_padding(&pki);
    let sha1 = pki.request_serial(&serial, "-sha1");
    let sha1_absent = without_hash_parameters(&sha1);
    let server = Server::start(&[("JITOCSP_CACHE_LOCAL_ENTRIES", "1000")]);
    let plain = b64(&sha256);
    let get = |der: &[u8], path: String| (der.to_vec(), Some(path));
    let forms = [
        get(&sha1, format!("/{}", b64(&sha1))),
        get(&sha1_absent, format!("/{}", b64(&sha1_absent))),
        get(&sha256, format!("/{plain}")),
        get(&sha256, format!("/{}", plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"))),
        get(&sha256, format!("/{}", plain.replace('/', "%2f"))),
        get(&sha256, format!("//{}", plain.replace('+', "%20"))),
        (sha1.clone(), None),
        (sha256.clone(), None),
    ];
    let ask = |(der, path): &(Vec<u8>, Option<String>)| match path {
        Some(path) => server.get(path, &[]),
        None => server.post(der),
    };
    let request_hits = || server.metric("jitocsp_cache_lookups_total", &["tier=\"local\"", "key=\"request\""]);
    let kept = || server.metric("jitocsp_local_request_keys", &[]);
    // Asks until the answer came from the request's bytes. A request can miss once for a
    // passing reason (an issuer reload after the listener connects makes every key miss once;
    // a late heartbeat of the feed on a loaded machine makes hits wait for the primary).
    let from_bytes = |form: &(Vec<u8>, Option<String>)| {
        for _ in 0..50 {
            let before = request_hits();
            let response = ask(form);
            if request_hits() - before == 1.0 {
                return response;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{:?} never answered from its bytes", form.1);
    };

    let mut first = Vec::new();
    for form in &forms {
        let response = ask(form);
        let text = judge_exchange(&pki, &form.0, &response, &["--expect-cert-status", "good"]);
        assert!(text.contains(&format!("serial={serial}")), "{:?}: {text}", form.1);
        first.push(response.body);
    }
    for (form, body) in forms.iter().zip(&first) {
        assert_eq!(&from_bytes(form).body, body, "{:?}: the same response again", form.1);
    }
    assert_eq!(kept(), forms.len() as f64, "one key per form");
    assert_eq!(server.metric("jitocsp_local_request_certificates", &[]), 1.0);

    jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", &serial, "--reason", "keyCompromise"], &[]);
    // The notification drops the keys; a key it missed would stay (refused on a hit, by the
    // freshness rule, but kept) and this would time out.
    let heard = std::time::Instant::now();
    while kept() != 0.0 && heard.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(kept(), 0.0, "keys of the revoked certificate still kept 10 s after `admin revoke`");
    assert_eq!(server.metric("jitocsp_local_request_certificates", &[]), 0.0);
    for form in &forms {
        let text = judge_exchange(&pki, &form.0, &ask(form), &["--expect-cert-status", "revoked"]);
        assert!(text.contains(&format!("serial={serial}")), "{:?}: {text}", form.1);
    }
    // The revoked answers are kept by their bytes in turn.
    for form in &forms {
        judge_exchange(&pki, &form.0, &from_bytes(form), &["--expect-cert-status", "revoked"]);
    }
}
