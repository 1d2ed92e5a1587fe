//! The client check: wrk against the same nginx as the hot reference, alternating with this
//! generator, so that the report shows whether the generator or the servers set the hot
//! rates. wrk is a C event loop that checks nothing but the status; if the generator drives
//! nginx about as fast, it is not the bound.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::closed::RunStats;

/// `wrk -t THREADS -c CONNECTIONS -d SECONDS --latency` GET `path` on `addr`, keep-alive.
pub fn run(
    addr: SocketAddr,
    path: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RunStats> {
    let cpu0 = reaped_children_cpu_seconds();
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1)), "--latency", "--timeout", "10s"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running wrk")?;
    let cpu = reaped_children_cpu_seconds() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    let mut stats = parse(&text).with_context(|| format!("reading wrk's output:\n{text}"))?;
    stats.seconds = duration.as_secs_f64();
    stats.client_cores = cpu / stats.seconds;
    if stats.answered_total > 0 {
        stats.client_us_per_answer = cpu * 1e6 / stats.answered_total as f64;
    }
    Ok(stats)
}

/// Whether wrk is installed.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Reads wrk's summary: requests/s, the latency distribution's 50% and 99%, and every kind of
/// failure it counts (non-2xx/3xx answers, socket errors).
fn parse(text: &str) -> anyhow::Result<RunStats> {
    let mut s = RunStats::default();
    let mut rps = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>()?),
            ["50%", v] => s.p50_ms = duration_ms(v)?,
            ["99%", v] => s.p99_ms = duration_ms(v)?,
            [n, "requests", "in", ..] => s.answered_total = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                s.failures.insert("HTTP status not 2xx or 3xx".into(), n.parse()?);
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.join(" ").split(',') {
                    if let [kind, n] = pair.split_whitespace().collect::<Vec<_>>().as_slice() {
                        let n: u64 = n.parse()?;
                        if n > 0 {
                            s.failures.insert(format!("socket error: {kind}"), n);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    s.rps = rps.context("no Requests/sec line")?;
    s.failed = s.failures.values().sum();
    // wrk counts what completed within its window only.
    s.answered = s.answered_total;
    s.ok = s.answered.saturating_sub(s.failed);
    s.ok_rps = s.rps;
    s.max_ms = s.p99_ms;
    Ok(s)
}

/// wrk's "192.00us", "1.71ms", "2.00s" in milliseconds.
fn duration_ms(v: &str) -> anyhow::Result<f64> {
    for (unit, scale) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3)] {
        if let Some(n) = v.strip_suffix(unit) {
            if let Ok(n) = n.parse::<f64>() {
                return Ok(n * scale);
            }
        }
    }
    bail!("{v:?} is not a wrk duration")
}

/// CPU seconds of this process's children that have been waited for (cutime + cstime).
fn reaped_children_cpu_seconds() -> f64 {
    crate::gen::stat_fields("self", &[13, 14]) as f64 / crate::gen::CLOCK_TICKS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:18933/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.17ms    1.72ms  12.17ms   84.88%
    Req/Sec    60.63k     4.63k   77.41k    85.71%
  Latency Distribution
     50%  192.00us
     75%    1.71ms
     90%    3.68ms
     99%    2.50s
  126875 requests in 1.10s, 64.49MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec: 115198.27
Transfer/sec:     58.56MB
";
        let s = parse(text).unwrap();
        assert_eq!(s.rps, 115198.27);
        assert_eq!((s.p50_ms, s.p99_ms), (0.192, 2500.0));
        assert_eq!((s.answered_total, s.answered, s.ok), (126875, 126875, 126864));
        assert_eq!(s.failed, 11);
        assert_eq!(s.failures["socket error: read"], 3);
        assert!(parse("unable to connect").is_err());
    }
}
