//! The steps: an open-loop schedule (a dispatcher on each generator thread, feeding that
//! thread's share of the `--connections` keep-alive connections), the CDN purge at each step's
//! start in cdn mode, and the responder's metrics sampled every second and at each step
//! boundary.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
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

    let threads = ctx.threads;
    let backlog = ((plan.full_rate * 5.0) as usize).max(10_000).div_ceil(threads);

    let mut times: Vec<f64> = (0..=run.as_secs_f64().ceil() as u64 + 1).map(|s| s as f64).collect();
    times.extend(plan.windows.iter().map(|(s, _)| s.as_secs_f64()));
    times.push(run.as_secs_f64());
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| (*a - *b).abs() < 0.05);
    let sampler_task = scrape::spawn_sampler(metrics.to_vec(), t0, times, who);

    let purges: Arc<Mutex<Vec<(usize, cdn::PurgeResult)>>> = Arc::default();
    let phases = phases(plan, ctx, requested, cdn_cache, &purges);
    // Each generator thread draws its own requests, from a seed of its own.
    let samplers = (0..threads as u64)
        .map(|thread| {
            let seed = args.request_seed.wrapping_add(thread);
            let l = &args.load;
            Sampler::new(&ctx.corpus, l.zipf, l.post_share, l.sha256_share, l.verify_every, seed).map(Some)
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .map(Mutex::new)
        .collect::<Vec<_>>();
    eprintln!(
        "cache-drop {:?}: {} steps of {} s, rates {:?} req/s -> {}",
        args.mode,
        plan.fractions.len(),
        plan.step.as_secs_f64(),
        plan.rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        ctx.targets.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(", ")
    );
    let shares: Vec<(f64, Duration, Duration)> =
        phases.iter().map(|p| (p.rate / threads as f64, p.start, p.duration)).collect();
    let hooks: Vec<_> = phases.into_iter().filter_map(|p| Some((p.start, p.on_start?))).collect();
    let hooks = std::thread::Builder::new()
        .name("step-hooks".into())
        .spawn(move || schedule::run_step_hooks(t0, hooks))
        .context("starting the step hooks' thread")?;

    // Each thread's connections end when its dispatcher is done and its queue is empty, or at
    // the deadline: whatever is still in flight then is counted as unanswered.
    let deadline = tokio::time::Instant::from_std(t0 + run + drain);
    let (connections, poisson) = (args.load.connections, args.arrival() == Arrival::Poisson);
    let max_requests = args.max_requests.div_ceil(threads as u64);
    let per_thread = on_threads(threads, |thread| {
        let (shares, recorder) = (shares.clone(), RefCell::new(template.empty_like()));
        let sampler = samplers[thread].lock().ok().and_then(|mut s| s.take());
        async move {
            let (tx, rx) = async_channel::bounded::<Job>(backlog);
            let rec = &recorder;
            let all = join_all(gen::connections_of(thread, threads, connections).map(|connection| {
                let rx = rx.clone();
                async move {
                    let mut conn = Conn::to_origin(connection);
                    while let Ok(job) = rx.recv().await {
                        let answered = ctx.execute(&mut conn, &job).await;
                        rec.borrow_mut().record(&job, answered);
                    }
                }
            }));
            drop(rx);
            let seed = 0x5c4e_d01e ^ thread as u64;
            let schedule = schedule::Plan { steps: shares, t0, poisson, max_requests, seed };
            let dispatched = async move {
                match sampler {
                    Some(sampler) => schedule::dispatch(schedule, sampler, tx, rec, Some(&**requested)).await,
                    None => SchedulerReport { lag_us: Vec::new() },
                }
            };
            let (lag, _) = tokio::join!(dispatched, tokio::time::timeout_at(deadline, all));
            (recorder.into_inner(), lag)
        }
    });
    let _ = tokio::task::spawn_blocking(move || hooks.join()).await;
    let load_average_end = report::load_average();
    let (recorders, lags): (Vec<_>, Vec<_>) = per_thread.into_iter().unzip();
    let recorder = merged(template, recorders);
    let scheduler = SchedulerReport::merged(lags);
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
