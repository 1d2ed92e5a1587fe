//! CDN purges of a mass revocation go in batches: real `jitocsp serve` responders deliver the
//! owed purges of their own database to real hooks (the example hook script in deploy/
//! against a stand-in for Cloudflare's API, and the HTTP hook), at most `cdn.max_batch`
//! tags and URLs a call, each purge exactly once, a failed batch retried whole.
//! (The pace, `cdn.max_calls_per_second`, is a count over a given clock: unit tests in
//! src/purge/cdn.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

const NOT_AFTER: &str = "2099-12-31T00:00:00Z";

/// A database of its own (every purge it owes is this test's) with one issuer; `None` when
/// the services or `more` programs are missing.
fn own_site(more: &[Need]) -> Option<(Site, Pki, String)> {
    let needs: Vec<Need> =
        [Need::Postgres, Need::Redis, Need::Openssl].into_iter().chain(more.iter().copied()).collect();
    if skip_unless(&needs) {
        return None;
    }
    let site = Site::with_own_database();
    let pki = Pki::new();
    let issuer = site.add_issuer(&pki);
    Some((site, pki, issuer))
}

/// `count` serials of the form `7xxxxx`, imported for `issuer`.
fn import(site: &Site, issuer: &str, first: u32, count: u32) -> Vec<String> {
    let serials: Vec<String> = (first..first + count).map(|i| format!("7{i:05x}")).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    site.import_serials(issuer, &refs, NOT_AFTER);
    serials
}

/// Revokes `serials` in one `admin revoke --serials-file` (one transaction, so every purge is
/// owed at once). More than the admin's inline limit (100), so the responders deliver them.
fn revoke(site: &Site, pki: &Pki, issuer: &str, serials: &[String], env: &[(&str, &str)]) {
    assert!(serials.len() > 100, "the responders, not the admin CLI, must deliver these");
    let file = pki.file(&format!("serials-{}.txt", serials[0]));
    std::fs::write(&file, serials.join("\n")).unwrap();
    let args =
        ["admin", "revoke", "--issuer", issuer, "--serials-file", file.to_str().unwrap(), "--reason", "superseded"];
    let said = site.jitocsp_ok(&args, env);
    assert!(said.contains(&format!("{} purges queued", serials.len())), "{said}");
}

fn wait_until_delivered(site: &Site, server: &Server) {
    server.wait_until(Duration::from_secs(90), |_| site.sql("SELECT count(*) FROM cdn_purges") == "0");
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// How many times each tag was in a call the hook (or the CDN) took.
fn delivered(calls: &[SinkCall], tags_of: impl Fn(&SinkCall) -> Vec<String>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for call in calls.iter().filter(|c| c.status == 200) {
        for tag in tags_of(call) {
            *seen.entry(tag).or_insert(0) += 1;
        }
    }
    seen
}

fn exactly_once(tags: &[String]) -> BTreeMap<String, usize> {
    tags.iter().map(|t| (t.clone(), 1)).collect()
}

/// 250 purges owed at once with `max_batch = 40` make ceil(250/40) = 7 calls of each hook,
/// together covering the 250 tags exactly once: the example hook script turns each batch into
/// one Cloudflare purge-by-tag request, the HTTP hook gets the batch JSON. Then, with GET URLs
/// (`base_url` set), a batch also holds at most 40 URLs, filled certificate by certificate.
#[test]
fn owed_purges_go_to_the_hooks_in_batches_of_max_batch() {
    let Some((site, pki, issuer)) = own_site(&[Need::Program("curl"), Need::Program("jq")]) else { return };
    let cloudflare = HttpSink::accepting();
    let hook = HttpSink::accepting();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hooks/purge-cdn.sh");
    let (command, purge_url, api) = (script.display().to_string(), hook.url("/purge"), cloudflare.url(""));
    let env = [
        ("JITOCSP_CDN_PURGE_COMMAND", command.as_str()),
        ("JITOCSP_CDN_PURGE_URL", purge_url.as_str()),
        ("JITOCSP_CDN_MAX_BATCH", "40"),
        ("JITOCSP_CDN_MAX_CALLS_PER_SECOND", "100"),
        ("CDN", "cloudflare"),
        ("CLOUDFLARE_ZONE_ID", "zone-1"),
        ("CLOUDFLARE_API_TOKEN", "token-1"),
        ("CDN_API_BASE", api.as_str()),
    ];
    let server = site.serve(&env);

    let serials = import(&site, &issuer, 0, 250);
    let tags: Vec<String> = serials.iter().map(|s| format!("{issuer}:{s}")).collect();
    revoke(&site, &pki, &issuer, &serials, &env);
    wait_until_delivered(&site, &server);

    let cf = cloudflare.calls();
    assert_eq!(cf.len(), 7, "ceil(250 / 40) calls: {cf:#?}");
    for call in &cf {
        assert_eq!((call.method.as_str(), call.path.as_str()), ("POST", "/zones/zone-1/purge_cache"));
        assert_eq!(call.header("authorization"), Some("Bearer token-1"));
        assert!(strings(&call.json()["tags"]).len() <= 40, "{}", call.body);
    }
    assert_eq!(delivered(&cf, |c| strings(&c.json()["tags"])), exactly_once(&tags));

    let posts = hook.calls();
    assert_eq!(posts.len(), 7, "{posts:#?}");
    assert_eq!(delivered(&posts, |c| strings(&c.json()["tags"])), exactly_once(&tags));
    for post in &posts {
        let batch = post.json();
        let purges = batch["purges"].as_array().unwrap();
        assert_eq!(
            strings(&batch["tags"]),
            purges.iter().map(|p| p["tag"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        );
        assert!(purges.iter().all(|p| p["issuer"] == issuer.as_str() && p["action"] == "revoke"), "{}", post.body);
        assert!(purges.iter().all(|p| serials.contains(&p["serial"].as_str().unwrap().to_owned())), "{}", post.body);
        assert_eq!(strings(&batch["urls"]), Vec::<String>::new(), "no base_url, no URLs");
    }
    assert_eq!(server.metric("jitocsp_cdn_purges_total", &["hook=\"command\"", "result=\"done\""]), 7.0);
    assert_eq!(server.metric("jitocsp_cdn_purges_total", &["hook=\"http\"", "result=\"done\""]), 7.0);
    assert_eq!(server.metric("jitocsp_cdn_purge_items_total", &["result=\"done\""]), 250.0);

    // With GET URLs: 2 to 4 per certificate, so the URL bound fills a batch first.
    let base = "http://ocsp.test.example";
    let with_urls: Vec<(&str, &str)> = env.iter().copied().chain([("JITOCSP_CDN_BASE_URL", base)]).collect();
    let more = import(&site, &issuer, 1000, 120);
    revoke(&site, &pki, &issuer, &more, &with_urls);
    wait_until_delivered(&site, &server);
    // Calls run concurrently and arrive in any order, and a bulk revocation writes its rows in
    // the table's order, not the file's: compare as sets.
    let posts: Vec<serde_json::Value> = hook.calls()[7..].iter().map(SinkCall::json).collect();
    let mut more_tags: Vec<String> = more.iter().map(|s| format!("{issuer}:{s}")).collect();
    let mut got: Vec<String> = posts.iter().flat_map(|p| strings(&p["tags"])).collect();
    more_tags.sort();
    got.sort();
    assert_eq!(got, more_tags, "each once");
    let url_counts: Vec<Vec<usize>> = posts
        .iter()
        .map(|p| p["purges"].as_array().unwrap().iter().map(|c| strings(&c["urls"]).len()).collect())
        .collect();
    for (i, counts) in url_counts.iter().enumerate() {
        let urls: usize = counts.iter().sum();
        assert_eq!(strings(&posts[i]["urls"]).len(), urls);
        assert!(counts.iter().all(|n| (2..=4).contains(n)) && urls <= 40, "call {i}: {counts:?}");
        assert!(strings(&posts[i]["urls"]).iter().all(|u| u.starts_with(base)));
    }
    // Full: but for the last one claimed, no batch had room for a certificate of 4 URLs.
    let roomy = url_counts.iter().filter(|counts| counts.iter().sum::<usize>() + 4 <= 40).count();
    assert!(roomy <= 1, "{roomy} calls had room for another certificate: {url_counts:?}");
    let cf_more = &cloudflare.calls()[7..];
    assert_eq!(cf_more.len(), posts.len());
    assert_eq!(delivered(cf_more, |c| strings(&c.json()["tags"])), exactly_once(&more_tags));
}

/// Two responders share one database; the hook refuses one call (HTTP 503). That batch is
/// retried whole once it is due again, and in the end every purge was taken exactly once: the
/// leases kept the two responders off each other's batches, and nothing was lost.
#[test]
fn a_failed_batch_is_retried_whole_and_nothing_is_lost_or_repeated() {
    let Some((site, pki, issuer)) = own_site(&[]) else { return };
    let hook = HttpSink::start(|n, _| if n == 1 { (503, "busy".into()) } else { (200, String::new()) });
    let purge_url = hook.url("/purge");
    let env = [
        ("JITOCSP_CDN_PURGE_URL", purge_url.as_str()),
        ("JITOCSP_CDN_MAX_BATCH", "50"),
        ("JITOCSP_CDN_MAX_CALLS_PER_SECOND", "100"),
    ];
    let servers = [site.serve(&env), site.serve(&env)];

    let serials = import(&site, &issuer, 0, 300);
    let tags: Vec<String> = serials.iter().map(|s| format!("{issuer}:{s}")).collect();
    revoke(&site, &pki, &issuer, &serials, &env);
    wait_until_delivered(&site, &servers[0]);

    let calls = hook.calls();
    let failed: Vec<&SinkCall> = calls.iter().filter(|c| c.status != 200).collect();
    assert_eq!(failed.len(), 1, "{calls:#?}");
    let refused = strings(&failed[0].json()["tags"]);
    assert_eq!(refused.len(), 50, "a full batch was refused");
    // Six batches of 50; the refused one once more, whole.
    assert_eq!(calls.len(), 7, "{calls:#?}");
    let retried: Vec<&SinkCall> =
        calls.iter().filter(|c| c.status == 200 && strings(&c.json()["tags"]) == refused).collect();
    assert_eq!(retried.len(), 1, "the refused batch came back as it was");
    assert_eq!(delivered(&calls, |c| strings(&c.json()["tags"])), exactly_once(&tags));

    let sum = |name: &str, labels: &[&str]| servers.iter().map(|s| s.metric(name, labels)).sum::<f64>();
    assert_eq!(sum("jitocsp_cdn_purges_total", &["result=\"failed\""]), 1.0);
    assert_eq!(sum("jitocsp_cdn_purges_total", &["result=\"done\""]), 6.0);
    assert_eq!(sum("jitocsp_cdn_purge_items_total", &["result=\"retried\""]), 50.0);
    assert_eq!(sum("jitocsp_cdn_purge_items_total", &["result=\"done\""]), 300.0);
}
