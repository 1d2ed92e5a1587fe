//! `capacity`: closed-loop throughput of a static file (the ceiling) or of jitocsp's hot path
//! over `--hot-set` warmed certificates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};

use crate::cli::{check_shares, load_corpus, metrics_addrs, targets, CapacityArgs};
use crate::closed::{self, Pick};
use crate::corpus::{self, Corpus};
use crate::gen::{Ctx, Requested};
use crate::scrape;

pub async fn run(args: CapacityArgs) -> anyhow::Result<()> {
    check_shares(&args.load)?;
    let targets = targets(&args.load)?;
    let metrics = metrics_addrs(&args.load)?;
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= 600.0, "--seconds must be in (0, 600]");
    let static_len = match &args.static_path {
        Some(_) => Some(args.static_len.context("--static-path needs --static-len")?),
        None => None,
    };
    // A static run needs no corpus; give the context an empty-but-valid one.
    let corpus = match &args.static_path {
        Some(_) => Arc::new(placeholder_corpus()?),
        None => Arc::new(load_corpus(&args.corpus)?),
    };
    let mut ctx = Ctx::with_origins(targets, corpus.clone(), args.load.threads);
    ctx.static_path = args.static_path.clone().map(|p| format!("{}{p}", ctx.prefix())).unwrap_or_default();
    let ctx = Arc::new(ctx);
    let hot = args.hot_set.clamp(1, corpus.count);
    let pick = match static_len {
        Some(len) => Pick::Static { len },
        None => {
            let requested = Arc::new(Requested::new(corpus.issuers.len(), corpus.count));
            let list = closed::warm_list(&corpus, hot, false);
            let w = closed::each_once(&ctx, args.load.connections.min(64), list, Some(&requested)).await;
            eprintln!("warmed {} certificates: {} ok, {} failed", w.requests, w.ok, w.failed);
            Pick::Uniform { issuers: corpus.issuers.len() as u16, count: hot }
        }
    };
    let t0 = Instant::now() + Duration::from_millis(200);
    let sampler = scrape::spawn_sampler(metrics, t0, vec![0.0, args.seconds], None);
    let duration = Duration::from_secs_f64(args.seconds);
    let st = closed::run_for(&ctx, args.load.connections, duration, Arc::new(pick), args.load.verify_every).await;
    let samples = sampler.await.unwrap_or_default();
    let d = match samples.as_slice() {
        [a, b, ..] => scrape::delta(a, b),
        _ => scrape::Delta::default(),
    };
    let result = serde_json::json!({
        "label": args.label,
        "target": args.load.targets.join(","),
        "static_path": args.static_path,
        "seconds": args.seconds,
        "connections": args.load.connections,
        "requests": st.answered_total,
        "answered": st.answered_total,
        "ok": st.ok,
        "failed": st.failed,
        "failures": st.failures,
        "rps": st.rps,
        "ok_rps": st.ok_rps,
        "p50_ms": st.p50_ms,
        "p99_ms": st.p99_ms,
        "max_ms": st.max_ms,
        "redis_hit_ratio": d.redis_hit_ratio,
        "signatures_per_s": d.signatures_per_s,
        "generator_cpu_cores": d.generator_cpu,
    });
    println!(
        "{}: {:.0} answers/s ({:.0} ok/s), p50 {:.2} ms, p99 {:.2} ms, {} failed, generator {:.2} cores",
        args.label, st.rps, st.ok_rps, st.p50_ms, st.p99_ms, st.failed, d.generator_cpu
    );
    if let Some(path) = &args.out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{result}")?;
    }
    anyhow::ensure!(st.failed == 0, "{} requests failed: {:?}", st.failed, st.failures);
    Ok(())
}

/// A corpus with one made-up issuer, for static-file runs that never build an OCSP request.
fn placeholder_corpus() -> anyhow::Result<Corpus> {
    let hashes = jitocsp::x509::CertIdHashes {
        name_sha1: [0; 20],
        key_sha1: [0; 20],
        name_sha256: [0; 32],
        key_sha256: [0; 32],
    };
    let key = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).map_err(|_| anyhow!("placeholder key"))?;
    Corpus::new(vec![corpus::Issuer::new("static", hashes, *key.verifying_key(), 0, 0)], 1, 0.0, 0)
}
