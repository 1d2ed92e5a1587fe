//! The steps: an open-loop schedule (scheduler thread, `--connections` keep-alive workers),
//! the CDN purge at each step's start in cdn mode, and the responder's metrics sampled every
//! second and at each step boundary.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::future::join_all;

use super::{CdnCache, Plan};
use crate::cdn;
use crate::cli::{Arrival, CacheDropArgs};
use crate::closed::merged;
use crate::gen::{self, on_threads, Conn, Ctx, Job, Recorder, Requested};
use crate::report;
use crate::schedule::{self, Phase, Sampler, SchedulerReport};
use crate::scrape::{self, Sample};

/// What the steps leave for the summary.
pub struct Outcome {
    /// What the client saw: every generator thread's recording and the scheduler's, merged.
    pub recorder: Recorder,
    pub samples: Vec<Sample>,
    pub purges: Vec<(usize, cdn::PurgeResult)>,
    pub scheduler: SchedulerReport,
    pub load_average_start: String,
    pub load_average_end: String,
}

pub async fn run(
    args: &CacheDropArgs,
    plan: &Plan,
    ctx: &Arc<Ctx>,
    requested: &Arc<Requested>,
    cdn_cache: &CdnCache,
    metrics: &[SocketAddr],
    who: Option<crate::cpu::Who>,
) -> anyhow::Result<Outcome> {
    let load_average_start = report::load_average();
    let settle = Duration::from_millis(500);
    let t0 = Instant::now() + settle;
    let run = plan.run();
    let bucket = Duration::from_secs_f64((run.as_secs_f64() / 300.0).max(0.25));
    let drain = gen::REQUEST_TIMEOUT + Duration::from_secs(2);
    let template = Recorder::new(t0, plan.windows.clone(), bucket, run + drain);

    let backlog = ((plan.full_rate * 5.0) as usize).max(10_000);
    let (tx, rx) = async_channel::bounded::<Job>(backlog);

    let mut times: Vec<f64> = (0..=run.as_secs_f64().ceil() as u64 + 1).map(|s| s as f64).collect();
    times.extend(plan.windows.iter().map(|(s, _)| s.as_secs_f64()));
    times.push(run.as_secs_f64());
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| (*a - *b).abs() < 0.05);
    let sampler_task = scrape::spawn_sampler(metrics.to_vec(), t0, times, who);

    let purges: Arc<Mutex<Vec<(usize, cdn::PurgeResult)>>> = Arc::default();
    let phases = phases(plan, ctx, requested, cdn_cache, &purges);
    let sampler = Sampler::new(
        &ctx.corpus,
        args.load.zipf,
        args.load.post_share,
        args.load.sha256_share,
        args.load.verify_every,
        args.request_seed,
    )?;
    eprintln!(
        "cache-drop {:?}: {} steps of {} s, rates {:?} req/s -> {}",
        args.mode,
        plan.fractions.len(),
        plan.step.as_secs_f64(),
        plan.rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        ctx.targets.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(", ")
    );
    let sched_requested = requested.clone();
    let plan_of_requests =
        schedule::Plan { phases, t0, poisson: args.arrival() == Arrival::Poisson, max_requests: args.max_requests };
    let scheduled = template.empty_like();
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || schedule::schedule(plan_of_requests, sampler, tx, scheduled, Some(&sched_requested)))
        .context("starting the scheduler thread")?;

    // The connections end when the scheduler is done and the queue is empty, or at the
    // deadline: whatever is still in flight then is counted as unanswered.
    let deadline = tokio::time::Instant::from_std(t0 + run + drain);
    let connections = args.load.connections;
    let recorders = on_threads(ctx.threads, |thread| {
        let (rx, rec) = (rx.clone(), RefCell::new(template.empty_like()));
        async move {
            let all = join_all(gen::connections_of(thread, ctx.threads, connections).map(|connection| {
                let (rx, rec) = (rx.clone(), &rec);
                async move {
                    let mut conn = Conn::to_origin(connection);
                    while let Ok(job) = rx.recv().await {
                        let answered = ctx.execute(&mut conn, &job).await;
                        rec.borrow_mut().record(&job, answered);
                    }
                }
            }));
            let _ = tokio::time::timeout_at(deadline, all).await;
            rec.into_inner()
        }
    });
    drop(rx);
    let (scheduler, scheduled) = tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow!("the scheduler thread panicked"))?;
    let load_average_end = report::load_average();
    let mut recorder = merged(template, recorders);
    recorder.merge(scheduled);
    let samples = sampler_task.await.unwrap_or_default();
    let purges = std::mem::take(&mut *purges.lock().expect("purges lock"));
    Ok(Outcome { recorder, samples, purges, scheduler, load_average_start, load_average_end })
}

/// One phase per step; in cdn mode each starts by purging its share of nginx's cache.
fn phases(
    plan: &Plan,
    ctx: &Arc<Ctx>,
    requested: &Arc<Requested>,
    cdn_cache: &CdnCache,
    purges: &Arc<Mutex<Vec<(usize, cdn::PurgeResult)>>>,
) -> Vec<Phase> {
    plan.fractions
        .iter()
        .enumerate()
        .map(|(k, fraction)| {
            let on_start: Option<Box<dyn FnOnce() + Send>> = cdn_cache.clone().map(|(dir, levels)| {
                let (corpus, requested, purges, prefix, fraction) =
                    (ctx.corpus.clone(), requested.clone(), purges.clone(), ctx.prefix().to_owned(), *fraction);
                Box::new(move || {
                    let r = cdn::purge(&dir, &levels, &prefix, &corpus, &requested, fraction);
                    purges.lock().expect("purges lock").push((k, r));
                }) as Box<dyn FnOnce() + Send>
            });
            Phase { rate: plan.rates[k], start: plan.windows[k].0, duration: plan.step, on_start }
        })
        .collect()
}
