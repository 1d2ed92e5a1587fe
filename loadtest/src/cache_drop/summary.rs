//! The report phase: per-step figures from the client's recorder, the scheduler's lag and the
//! responder's metrics; the timeline for the picture; the metrics series.

use std::sync::Arc;

use super::steps::Outcome;
use super::Plan;
use crate::cli::CacheDropArgs;
use crate::gen::{self, Ctx, Recorder};
use crate::report::{MetricsPoint, OriginReport, Report, StepReport, TimelinePoint, WarmReport};
use crate::scrape::{self, nearest, Sample};

pub fn report(
    args: &CacheDropArgs,
    plan: &Plan,
    ctx: &Arc<Ctx>,
    o: Outcome,
    warm: Option<WarmReport>,
    metrics: bool,
) -> Report {
    let steps = step_reports(plan, ctx, &o.recorder, &o);
    let timeline = timeline(&o.recorder);
    let corpus = &ctx.corpus;
    let sum = |f: fn(&StepReport) -> u64| steps.iter().map(f).sum::<u64>();
    Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        target: ctx.targets.iter().map(|t| format!("http://{}{}", t.host, t.prefix)).collect::<Vec<_>>().join(","),
        full_rate: plan.full_rate,
        step_seconds: plan.step.as_secs_f64(),
        arrival: format!("{:?}", args.arrival()).to_lowercase(),
        redis: args.redis_label.clone().unwrap_or_else(|| if warm.is_some() { "warm".into() } else { "cold".into() }),
        certificates_per_issuer: corpus.count,
        issuers: corpus.issuers.iter().map(|i| i.name.clone()).collect(),
        revoked_share: args.corpus.revoked_share,
        zipf_exponent: args.load.zipf,
        post_share: args.load.post_share,
        sha256_share: args.load.sha256_share,
        connections: args.load.connections,
        load_average_start: o.load_average_start,
        load_average_end: o.load_average_end,
        warm,
        total_requests: sum(|s| s.requests),
        total_ok: sum(|s| s.ok),
        total_try_later: sum(|s| s.try_later),
        total_failed: sum(|s| s.failed),
        total_unverified: sum(|s| s.unverified),
        all_answers_verified: steps.iter().all(|s| s.unverified == 0),
        steps,
        timeline,
        metrics: metrics_series(&o.samples, plan.run().as_secs_f64(), metrics),
    }
}

fn origin_reports(st: &gen::StepStats, targets: &[gen::Target]) -> Vec<OriginReport> {
    st.origins
        .iter()
        .zip(targets)
        .map(|(o, t)| OriginReport {
            target: t.addr.to_string(),
            answered: o.answered,
            ok: o.ok,
            try_later: o.try_later,
            failed: o.failed,
            p50_ms: gen::ms(&o.latency_us, 0.5),
            p99_ms: gen::ms(&o.latency_us, 0.99),
            max_ms: o.latency_us.max() as f64 / 1000.0,
        })
        .collect()
}

fn step_reports(plan: &Plan, ctx: &Ctx, rec: &Recorder, o: &Outcome) -> Vec<StepReport> {
    let mut steps = Vec::new();
    for (k, fraction) in plan.fractions.iter().enumerate() {
        let st = &rec.steps[k];
        let (start, len) = (plan.windows[k].0.as_secs_f64(), plan.windows[k].1.as_secs_f64());
        let mut failures: std::collections::BTreeMap<String, u64> =
            st.failures.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let no_answer: u64 = st.failures.iter().filter(|(k, _)| k.starts_with("no answer:")).map(|(_, v)| v).sum();
        let unanswered = st.scheduled.saturating_sub(st.answered + no_answer + st.backlog_dropped);
        if unanswered > 0 {
            failures.insert("no answer: run ended".into(), unanswered);
        }
        let unverified: u64 = st
            .failures
            .iter()
            .filter(|(k, _)| !k.starts_with("no answer:") && **k != "generator backlog full")
            .map(|(_, v)| v)
            .sum();
        let bounds = match (nearest(&o.samples, start), nearest(&o.samples, start + len)) {
            (Some(a), Some(b)) if b.at > a.at => Some((a, b)),
            _ => None,
        };
        let d = bounds.map_or_else(scrape::Delta::default, |(a, b)| scrape::delta(a, b));
        let cpu =
            bounds.and_then(|(a, b)| Some(crate::cpu::between(a.machine.as_ref()?, b.machine.as_ref()?, b.at - a.at)));
        let cdn_total: u64 = st.cdn.values().sum();
        let lag = &o.scheduler.lag_us[k];
        steps.push(StepReport {
            step: k,
            fraction: *fraction,
            label: label(*fraction),
            start_s: start,
            duration_s: len,
            offered_rps: st.scheduled as f64 / len,
            achieved_rps: st.completed_in_window as f64 / len,
            ok_rps: st.ok_in_window as f64 / len,
            success_ratio: if st.scheduled > 0 { st.ok as f64 / st.scheduled as f64 } else { 0.0 },
            requests: st.scheduled,
            answered: st.answered,
            ok: st.ok,
            good: st.good,
            revoked: st.revoked,
            try_later: st.try_later,
            failed: failures.values().sum(),
            failures,
            unverified,
            signatures_checked: st.signatures_checked,
            post_requests: st.post,
            p50_ms: gen::ms(&st.latency_us, 0.5),
            p90_ms: gen::ms(&st.latency_us, 0.9),
            p99_ms: gen::ms(&st.latency_us, 0.99),
            p999_ms: gen::ms(&st.latency_us, 0.999),
            max_ms: st.latency_us.max() as f64 / 1000.0,
            redis_hit_ratio: d.redis_hit_ratio,
            signatures_per_s: d.signatures_per_s,
            db_reads_per_s: d.db_reads_per_s,
            origin_rps: d.origin_rps,
            origin_try_later: d.origin_try_later,
            cdn_hit_ratio: (cdn_total > 0).then(|| *st.cdn.get("HIT").unwrap_or(&0) as f64 / cdn_total as f64),
            cdn_statuses: st.cdn.clone(),
            purge: o.purges.iter().find(|(i, _)| *i == k).map(|(_, r)| *r),
            generator_lag_p99_ms: gen::ms(lag, 0.99),
            generator_lag_max_ms: lag.max() as f64 / 1000.0,
            generator_cpu_cores: d.generator_cpu,
            cpu,
            origins: if st.origins.len() > 1 { origin_reports(st, &ctx.targets) } else { Vec::new() },
        });
    }
    steps
}

fn timeline(rec: &Recorder) -> Vec<TimelinePoint> {
    let w = rec.bucket_width.as_secs_f64();
    let last = rec.buckets.iter().rposition(|b| b.scheduled > 0 || b.answered > 0).map_or(0, |i| i + 1);
    rec.buckets[..last]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let q = |q: f64| (b.answered > 0).then(|| b.latency_us.value_at_quantile(q) as f64 / 1000.0);
            TimelinePoint {
                t: (i as f64 + 0.5) * w,
                offered_rps: b.scheduled as f64 / w,
                achieved_rps: b.answered as f64 / w,
                ok_rps: b.ok as f64 / w,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                max_ms: (b.answered > 0).then(|| b.latency_us.max() as f64 / 1000.0),
            }
        })
        .collect()
}

/// Signatures/s, origin requests/s and Redis hit ratio between consecutive samples.
fn metrics_series(samples: &[Sample], run_seconds: f64, metrics: bool) -> Vec<MetricsPoint> {
    if !metrics {
        return Vec::new();
    }
    samples
        .windows(2)
        .filter(|p| p[1].at <= run_seconds + 0.5)
        .map(|p| {
            let d = scrape::delta(&p[0], &p[1]);
            MetricsPoint {
                t: (p[0].at + p[1].at) / 2.0,
                signatures_per_s: d.signatures_per_s,
                origin_rps: d.origin_rps,
                redis_hit_ratio: d.redis_hit_ratio,
            }
        })
        .collect()
}

fn label(fraction: f64) -> String {
    if fraction >= 1.0 {
        return "1".into();
    }
    let inverse = 1.0 / fraction;
    if (inverse - inverse.round()).abs() < 1e-9 {
        format!("1/{}", inverse.round())
    } else {
        format!("{fraction:.3}")
    }
}
