//! `cache-drop`: replays a CDN cache drop. One file per phase, run in this order:
//! - here, set-up: check the arguments, plan the steps (rates and windows), build the context;
//! - [`warm`]: request certificates once (a warm Redis, or the CDN's cache), prove the purge
//!   finds nginx's files;
//! - [`steps`]: the open-loop schedule, with the responder's metrics sampled alongside;
//! - [`summary`]: per-step figures, timeline and metrics series, written as the report.
//!
//! [`find_max`] (`--find-max`) runs the same schedule many times, at full rates chosen by
//! bisection, against responders it starts itself.

pub mod find_max;
mod steps;
mod summary;
mod warm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cli::{check_shares, load_corpus, metrics_addrs, parse_fraction, targets, CacheDropArgs, Mode};
use crate::gen::{Ctx, Requested};
use crate::{cdn, report};

/// The schedule: one step per fraction, each `step` long, at `rates[k]` requests/s.
pub struct Plan {
    pub full_rate: f64,
    pub fractions: Vec<f64>,
    pub rates: Vec<f64>,
    pub step: Duration,
    /// (start, length) of each step from the schedule's start.
    pub windows: Vec<(Duration, Duration)>,
}

impl Plan {
    fn new(args: &CacheDropArgs, full_rate: f64) -> anyhow::Result<Plan> {
        let fractions = args.fractions.split(',').map(parse_fraction).collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!fractions.is_empty(), "--fractions lists no step");
        anyhow::ensure!(full_rate > 0.0 && full_rate <= 1e6, "--full-rate must be in (0, 1000000]");
        let step_seconds = args.step_seconds();
        anyhow::ensure!(step_seconds >= 0.5, "--step-seconds must be at least 0.5");
        let step = Duration::from_secs_f64(step_seconds);
        let rates: Vec<f64> =
            fractions.iter().map(|f| if args.mode == Mode::Origin { full_rate * f } else { full_rate }).collect();
        let planned: f64 = rates.iter().map(|r| r * step_seconds).sum();
        let total_seconds = step_seconds * fractions.len() as f64;
        if planned > args.max_requests as f64 {
            bail!("the schedule has {planned:.0} requests, over --max-requests {}", args.max_requests);
        }
        if total_seconds > args.max_seconds {
            bail!("the schedule lasts {total_seconds} s, over --max-seconds {}", args.max_seconds);
        }
        let windows = (0..fractions.len()).map(|k| (step * k as u32, step)).collect();
        Ok(Plan { full_rate, fractions, rates, step, windows })
    }

    /// The whole schedule's length.
    pub fn run(&self) -> Duration {
        self.step * self.fractions.len() as u32
    }
}

/// cdn mode: nginx's cache directory and its `levels`.
pub type CdnCache = Option<(PathBuf, Vec<usize>)>;

pub async fn run(args: CacheDropArgs) -> anyhow::Result<()> {
    check_shares(&args.load)?;
    if args.find_max.find_max {
        return find_max::run(&args).await;
    }
    let full_rate = args.full_rate.context("--full-rate is required")?;
    let corpus = Arc::new(load_corpus(&args.corpus)?);
    let targets = targets(&args.load)?;
    let metrics = metrics_addrs(&args.load)?;
    let plan = Plan::new(&args, full_rate)?;
    let cdn_cache: CdnCache = match args.mode {
        Mode::Cdn => {
            let dir = args.nginx_cache_dir.clone().context("--mode cdn needs --nginx-cache-dir")?;
            anyhow::ensure!(dir.is_dir(), "--nginx-cache-dir {}: not a directory", dir.display());
            Some((dir, cdn::parse_levels(&args.nginx_levels)?))
        }
        Mode::Origin => None,
    };
    let requested = Arc::new(Requested::new(corpus.issuers.len(), corpus.count));
    let ctx = Arc::new(Ctx::with_origins(targets, corpus, args.load.threads));

    let warm = warm::run(&args, &ctx, &requested, &cdn_cache).await?;
    let who = crate::cpu::Who::new(
        args.responder_pids.clone(),
        args.find_max.database_url.as_deref(),
        args.find_max.redis_url.as_deref(),
    );
    let outcome = steps::run(&args, &plan, &ctx, &requested, &cdn_cache, &metrics, Some(who)).await?;
    let report = summary::report(&args, &plan, &ctx, outcome, warm, !metrics.is_empty());
    report::write_all(&report, &args.out)?;
    print!("{}", report::text(&report));
    eprintln!("wrote {}/report.json, report.txt, report.svg", args.out.display());
    Ok(())
}
