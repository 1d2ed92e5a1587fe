//! The three outputs of a run: `report.json` (field names are a contract: operators script
//! against them), `report.txt` (a table) and `report.svg` (rate and latency over time, steps
//! marked).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cdn::PurgeResult;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub fraction: f64,
    pub label: String,
    pub start_s: f64,
    pub duration_s: f64,
    /// Requests per second the schedule asked for in this step.
    pub offered_rps: f64,
    /// Answers (any HTTP response) completed per second within the step's window.
    pub achieved_rps: f64,
    /// Verified successful OCSP answers completed per second within the step's window.
    pub ok_rps: f64,
    /// Verified successful answers / requests scheduled in the step (tryLater and failures are not success).
    pub success_ratio: f64,
    pub requests: u64,
    pub answered: u64,
    pub ok: u64,
    pub good: u64,
    pub revoked: u64,
    pub try_later: u64,
    /// Requests that got no verified answer and no tryLater (includes `unanswered`).
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Answers that were not a correct OCSP response for what was asked (must be 0).
    pub unverified: u64,
    pub signatures_checked: u64,
    pub post_requests: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub redis_hit_ratio: Option<f64>,
    pub signatures_per_s: f64,
    pub db_reads_per_s: f64,
    pub origin_rps: f64,
    pub origin_try_later: f64,
    pub cdn_hit_ratio: Option<f64>,
    pub cdn_statuses: BTreeMap<String, u64>,
    pub purge: Option<PurgeResult>,
    /// How late the scheduler handed requests over (p99, max), and the generator's CPU use in
    /// cores: a lag near the latencies, or CPU near the cores it has, means the generator, not
    /// the server, was the limit.
    pub generator_lag_p99_ms: f64,
    pub generator_lag_max_ms: f64,
    pub generator_cpu_cores: f64,
    /// Where the machine's CPU went during the step (see `cpu.rs`), when it was sampled.
    #[serde(default)]
    pub cpu: Option<crate::cpu::Breakdown>,
    /// Per origin, when there were several (`--target` repeated); empty otherwise.
    #[serde(default)]
    pub origins: Vec<OriginReport>,
}

/// One origin's share of a step, when the load went to several origins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OriginReport {
    pub target: String,
    pub answered: u64,
    pub ok: u64,
    pub try_later: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub ok_rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetricsPoint {
    pub t: f64,
    pub signatures_per_s: f64,
    pub origin_rps: f64,
    pub redis_hit_ratio: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WarmReport {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub full_rate: f64,
    pub step_seconds: f64,
    pub arrival: String,
    pub redis: String,
    pub certificates_per_issuer: u64,
    pub issuers: Vec<String>,
    pub revoked_share: f64,
    pub zipf_exponent: f64,
    pub post_share: f64,
    pub sha256_share: f64,
    pub connections: usize,
    /// /proc/loadavg (1, 5, 15 min) at the start and at the end of the steps: other work on
    /// the machine shows here.
    pub load_average_start: String,
    pub load_average_end: String,
    pub warm: Option<WarmReport>,
    pub steps: Vec<StepReport>,
    pub total_requests: u64,
    pub total_ok: u64,
    pub total_try_later: u64,
    pub total_failed: u64,
    pub total_unverified: u64,
    /// True when every answer received was a verified OCSP response or a tryLater.
    pub all_answers_verified: bool,
    pub timeline: Vec<TimelinePoint>,
    pub metrics: Vec<MetricsPoint>,
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map(|v| format!("{:.*}", digits, v * scale)).unwrap_or_else(|| "-".into())
}

pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cache-drop {} -> {}: full rate {} req/s, {} s per step, {} arrivals, {} Redis, {} issuer(s) x {} certificates, \
         {:.1}% revoked, Zipf s={}, POST {:.0}%, SHA-256 {:.0}%, {} connections",
        report.mode,
        report.target,
        report.full_rate,
        report.step_seconds,
        report.arrival,
        report.redis,
        report.issuers.len(),
        report.certificates_per_issuer,
        report.revoked_share * 100.0,
        report.zipf_exponent,
        report.post_share * 100.0,
        report.sha256_share * 100.0,
        report.connections
    );
    if let Some(w) = &report.warm {
        let _ = writeln!(
            out,
            "warm-up: {} requests in {:.1} s ({:.0}/s), {} ok, {} failed",
            w.requests,
            w.seconds,
            w.requests as f64 / w.seconds.max(1e-9),
            w.ok,
            w.failed
        );
    }
    let _ = writeln!(
        out,
        "{:>5} {:>9} {:>9} {:>9} {:>8} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>7} {:>8} {:>7}",
        "share",
        "offered/s",
        "achiev/s",
        "success%",
        "tryLater",
        "fail",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "redisHit",
        "sigs/s",
        "pgReads/s",
        "origin/s",
        "cdnHit",
        "genLag99",
        "genCPU"
    );
    for s in &report.steps {
        let _ = writeln!(
            out,
            "{:>5} {:>9.0} {:>9.0} {:>9.3} {:>8} {:>5} {:>7.2} {:>7.2} {:>7.2} {:>7.1} {:>7.1} {:>8} {:>7.0} {:>9.0} {:>9.0} {:>7} {:>8.2} {:>7.2}",
            s.label,
            s.offered_rps,
            s.achieved_rps,
            s.success_ratio * 100.0,
            s.try_later,
            s.failed,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            opt(s.redis_hit_ratio, 100.0, 1),
            s.signatures_per_s,
            s.db_reads_per_s,
            s.origin_rps,
            opt(s.cdn_hit_ratio, 100.0, 1),
            s.generator_lag_p99_ms,
            s.generator_cpu_cores
        );
    }
    for s in &report.steps {
        for o in &s.origins {
            let _ = writeln!(
                out,
                "step {} origin {}: {} answered, {} ok, {} tryLater, {} failed, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                s.label, o.target, o.answered, o.ok, o.try_later, o.failed, o.p50_ms, o.p99_ms, o.max_ms
            );
        }
    }
    for s in &report.steps {
        if !s.failures.is_empty() {
            let _ = writeln!(out, "step {} failures: {:?}", s.label, s.failures);
        }
        if let Some(p) = &s.purge {
            let _ = writeln!(
                out,
                "step {} purge: {} of {} requested URLs were cached and deleted in {:.2} s",
                s.label, p.removed, p.urls, p.seconds
            );
        }
    }
    let rows: Vec<_> =
        report.steps.iter().filter_map(|s| Some((s.label.clone(), s.cpu?, s.signatures_per_s))).collect();
    cpu_table(&mut out, "step", &rows);
    let _ = writeln!(
        out,
        "machine load average (1/5/15 min): {} at the start, {} at the end",
        report.load_average_start, report.load_average_end
    );
    let _ = writeln!(
        out,
        "total: {} requests, {} ok, {} tryLater, {} failed, {} unverified answers; every answer verified: {}",
        report.total_requests,
        report.total_ok,
        report.total_try_later,
        report.total_failed,
        report.total_unverified,
        if report.all_answers_verified { "yes" } else { "NO" }
    );
    out
}

/// Where each step's CPU went, in cores, and what the responder, its Postgres backends and
/// its Redis spent together per signature (hits included: at the full step of a cache drop
/// most of it is the misses').
/// `rows` are (label, the step's CPU, its signatures/s); `what` names what a row is.
pub fn cpu_table(out: &mut String, what: &str, rows: &[(String, crate::cpu::Breakdown, f64)]) {
    let Some(cores) = rows.first().map(|(_, c, _)| c.cores) else { return };
    let _ = writeln!(
        out,
        "CPU by {what}, in cores of the machine's {cores:.1}: jitocsp (user/system), its Postgres backends, the rest of \
         Postgres, its Redis, this generator, other processes, busy outside processes; irq+softirq overlaps them"
    );
    let _ = writeln!(
        out,
        "{:>18} {:>8} {:>11} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>14}",
        what,
        "jitocsp",
        "(usr/sys)",
        "pgBack",
        "pgOther",
        "redis",
        "gen",
        "others",
        "outside",
        "idle",
        "irq",
        "us/sig (j+pg+r)"
    );
    for (label, c, signatures_per_s) in rows {
        let ours = c.responder() + c.postgres_backends + c.redis;
        let per_signature =
            if *signatures_per_s > 0.0 { format!("{:.0}", ours * 1e6 / signatures_per_s) } else { "-".into() };
        let _ = writeln!(
            out,
            "{:>18} {:>8.2} {:>11} {:>7.2} {:>7.2} {:>6.2} {:>6.2} {:>7.2} {:>7.2} {:>6.2} {:>6.2} {:>14}",
            label,
            c.responder(),
            format!("{:.2}/{:.2}", c.responder_user, c.responder_system),
            c.postgres_backends,
            c.postgres_other,
            c.redis,
            c.generator,
            c.other_processes,
            c.outside_processes,
            c.idle,
            c.kernel_irq,
            per_signature
        );
    }
}

/// The median of some figures (None for none).
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<()> {
    write_json_and_text(dir, report, &text(report))?;
    svg(report, &dir.join("report.svg")).map_err(|e| anyhow::anyhow!("writing report.svg: {e}"))?;
    Ok(())
}

/// Writes `DIR/report.json` and `DIR/report.txt` (every subcommand's report has both).
pub fn write_json_and_text(dir: &Path, report: &impl Serialize, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("report.json"), json + "\n").context("writing report.json")?;
    std::fs::write(dir.join("report.txt"), text).context("writing report.txt")?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// A named, coloured line.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Rate (offered, achieved, origin requests, signatures) and latency (p50, p99, max) over time.
pub fn svg(report: &Report, path: &Path) -> DrawResult {
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let t_max = report
        .timeline
        .iter()
        .map(|p| p.t)
        .chain(report.steps.iter().map(|s| s.start_s + s.duration_s))
        .fold(1.0f64, f64::max);
    let rate_max = report
        .timeline
        .iter()
        .flat_map(|p| [p.offered_rps, p.achieved_rps])
        .chain(report.metrics.iter().flat_map(|m| [m.signatures_per_s, m.origin_rps]))
        .fold(10.0f64, f64::max)
        * 1.1;
    let title = format!("cache-drop {} (full rate {} req/s, {} Redis)", report.mode, report.full_rate, report.redis);
    let mut rates = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)?;
    rates.configure_mesh().x_desc("seconds").y_desc("requests/s").draw()?;
    let series: [Series; 4] = [
        ("offered", RGBColor(150, 150, 150), report.timeline.iter().map(|p| (p.t, p.offered_rps)).collect()),
        ("achieved", BLUE, report.timeline.iter().map(|p| (p.t, p.achieved_rps)).collect()),
        ("origin requests/s", RGBColor(230, 140, 0), report.metrics.iter().map(|m| (m.t, m.origin_rps)).collect()),
        ("signatures/s", RED, report.metrics.iter().map(|m| (m.t, m.signatures_per_s)).collect()),
    ];
    for (name, color, points) in series {
        rates
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    for s in &report.steps {
        rates.draw_series(LineSeries::new(vec![(s.start_s, 0.0), (s.start_s, rate_max)], BLACK.mix(0.4)))?;
        rates.draw_series(std::iter::once(Text::new(
            s.label.clone(),
            (s.start_s + t_max * 0.005, rate_max * 0.97),
            ("sans-serif", 14),
        )))?;
    }
    rates.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let lat_max = report.timeline.iter().filter_map(|p| p.max_ms).fold(1.0f64, f64::max) * 1.5;
    let mut lat = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (0.05f64..lat_max).log_scale())?;
    lat.configure_mesh().x_desc("seconds (by completion time)").y_desc("latency ms (log)").draw()?;
    let lines: [Series; 3] = [
        ("p50", GREEN, report.timeline.iter().filter_map(|p| Some((p.t, p.p50_ms?.max(0.05)))).collect()),
        ("p99", RED, report.timeline.iter().filter_map(|p| Some((p.t, p.p99_ms?.max(0.05)))).collect()),
        (
            "max",
            RGBColor(120, 120, 120),
            report.timeline.iter().filter_map(|p| Some((p.t, p.max_ms?.max(0.05)))).collect(),
        ),
    ];
    for (name, color, points) in lines {
        lat.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    lat.draw_series(LineSeries::new(vec![(0.0, 100.0), (t_max, 100.0)], BLACK.mix(0.3)))?;
    for s in &report.steps {
        lat.draw_series(LineSeries::new(vec![(s.start_s, 0.05), (s.start_s, lat_max)], BLACK.mix(0.4)))?;
    }
    lat.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// `check-report`: the report has `steps` steps, each with every figure, every answer
/// verified, and success at least `min_success`.
pub fn check(report_path: &Path, steps: usize, min_success: f64) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(report_path).with_context(|| format!("reading {}", report_path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("report.json is not JSON")?;
    let list = value.get("steps").and_then(|s| s.as_array()).context("report.json has no `steps` array")?;
    anyhow::ensure!(list.len() == steps, "report has {} steps, expected {steps}", list.len());
    let mut problems = Vec::new();
    for (i, step) in list.iter().enumerate() {
        for field in [
            "fraction",
            "offered_rps",
            "achieved_rps",
            "success_ratio",
            "try_later",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "redis_hit_ratio",
            "signatures_per_s",
        ] {
            if !step.get(field).is_some_and(|v| v.is_number()) {
                problems.push(format!("step {i}: `{field}` missing or not a number"));
            }
        }
        let n = |f: &str| step.get(f).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        if n("unverified") != 0.0 {
            problems.push(format!("step {i}: {} answers failed verification: {}", n("unverified"), step["failures"]));
        }
        if n("answered").partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            problems.push(format!("step {i}: no answers"));
        }
        if matches!(n("success_ratio").partial_cmp(&min_success), None | Some(std::cmp::Ordering::Less)) {
            problems.push(format!(
                "step {i}: success {:.4} below {min_success} (failures {})",
                n("success_ratio"),
                step["failures"]
            ));
        }
        if !(n("achieved_rps") > 0.0 && n("p50_ms") > 0.0 && n("max_ms") >= n("p99_ms")) {
            problems.push(format!("step {i}: implausible figures"));
        }
    }
    if value.get("all_answers_verified").and_then(|v| v.as_bool()) != Some(true) {
        problems.push("all_answers_verified is not true".into());
    }
    anyhow::ensure!(problems.is_empty(), "{}: {}", report_path.display(), problems.join("; "));
    Ok(format!("{}: {steps} steps, every figure present, every answer verified", report_path.display()))
}
