//! Where the machine's CPU time goes during a run (issue 11: what bounds the full-drop step).
//!
//! On a 2-core machine the responder, Postgres, Redis and this generator share the cores, so
//! an origin's capacity is bounded by the sum of what each spends per miss, not by the
//! responder alone. Each sample reads `/proc/stat` and every process's utime and stime; a
//! step's figures are the differences between the samples at its bounds, in cores:
//! the responder (user and system apart), the Postgres backends of the run's database, the
//! rest of Postgres (background processes, WAL sender, a standby, other databases), the
//! run's Redis, this generator, every other process, and what was busy but charged to no
//! process alive at both samples: interrupt work (mostly loopback softirq) that ran while a
//! core was otherwise idle, and processes that started and ended in between (a build's
//! compilers next door, say). With tick accounting (this machine's kernel), a tick that
//! lands in softirq is charged to the process it interrupted as system time and to softirq
//! in `/proc/stat` both: `kernel_irq` is shown for scale, and overlaps the others.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What to look for: the responders' process ids, the run's database and Redis.
#[derive(Clone, Debug, Default)]
pub struct Who {
    pub responders: Vec<u32>,
    /// Postgres backends whose process title names this database are the run's.
    pub database: Option<String>,
    /// The redis-server whose process title shows this port is the run's.
    pub redis_port: Option<u16>,
}

impl Who {
    /// `database_url` and `redis_url` as given to the run; what cannot be parsed is left out
    /// (those processes are then counted as others').
    pub fn new(responders: Vec<u32>, database_url: Option<&str>, redis_url: Option<&str>) -> Who {
        let database = database_url
            .and_then(|u| u.parse::<tokio_postgres::Config>().ok())
            .and_then(|c| c.get_dbname().map(str::to_owned));
        let redis_port =
            redis_url.and_then(|u| redis::Client::open(u).ok()).and_then(|c| match c.get_connection_info().addr() {
                redis::ConnectionAddr::Tcp(_, port) => Some(*port),
                _ => None,
            });
        Who { responders, database, redis_port }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Group {
    ResponderUser,
    ResponderSystem,
    PostgresBackends,
    PostgresOther,
    Redis,
    Generator,
    Other,
}

/// The machine's CPU counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per process: its group and its ticks so far (the responder's twice: user, system).
    processes: HashMap<(u32, bool), (Group, u64)>,
    machine: MachineTicks,
}

/// The whole machine's CPU ticks so far, from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// irq and softirq.
    pub irq: u64,
    pub total: u64,
}

impl MachineTicks {
    /// Zero if `/proc/stat` cannot be read.
    pub fn now() -> MachineTicks {
        let line = std::fs::read_to_string("/proc/stat").ok().and_then(|t| t.lines().next().map(str::to_owned));
        // cpu user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> =
            line.iter().flat_map(|l| l.split_whitespace().skip(1).take(8)).filter_map(|v| v.parse().ok()).collect();
        if f.len() < 8 {
            return MachineTicks::default();
        }
        let total = f.iter().sum::<u64>();
        MachineTicks { busy: total - f[3] - f[4], irq: f[5] + f[6], total }
    }
}

/// A step's CPU use by consumer, in cores (1.0 = one core busy for the whole step).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    pub responder_user: f64,
    pub responder_system: f64,
    pub postgres_backends: f64,
    pub postgres_other: f64,
    pub redis: f64,
    pub generator: f64,
    pub other_processes: f64,
    /// Busy but charged to none of the above: interrupt work on otherwise idle cores, and
    /// processes that came and went between the samples.
    pub outside_processes: f64,
    /// irq + softirq of `/proc/stat` (mostly loopback networking): overlaps the system time
    /// of the processes it interrupted and `outside_processes`.
    pub kernel_irq: f64,
    pub idle: f64,
    /// The machine's cores, as `/proc/stat` counted them over the step.
    pub cores: f64,
}

impl Breakdown {
    pub fn responder(&self) -> f64 {
        self.responder_user + self.responder_system
    }
}

/// Reads the counters now; unreadable processes (gone meanwhile) are skipped.
pub fn snapshot(who: &Who) -> Snapshot {
    let mut s = Snapshot { machine: MachineTicks::now(), ..Snapshot::default() };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return s };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((comm, fields)) = crate::gen::split_stat(&stat) else { continue };
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (user, system) = (tick(11), tick(12));
        if who.responders.contains(&pid) {
            s.processes.insert((pid, false), (Group::ResponderUser, user));
            s.processes.insert((pid, true), (Group::ResponderSystem, system));
            continue;
        }
        let group = if pid == me {
            Group::Generator
        } else if comm == "postgres" {
            // Backends' titles are "postgres: USER DATABASE HOST(PORT) STATE".
            let title = cmdline(pid);
            let database = title.strip_prefix("postgres: ").and_then(|t| t.split(' ').nth(1));
            if database.is_some() && database == who.database.as_deref() {
                Group::PostgresBackends
            } else {
                Group::PostgresOther
            }
        } else if comm.starts_with("redis-server") {
            let port = who.redis_port.map(|p| format!(":{p}"));
            if port.is_some_and(|p| cmdline(pid).split(' ').any(|w| w.ends_with(&p))) {
                Group::Redis
            } else {
                Group::Other
            }
        } else {
            Group::Other
        };
        s.processes.insert((pid, false), (group, user + system));
    }
    s
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned()
}

/// The CPU used between two snapshots taken `seconds` apart. A process only in `b` started in
/// between: all its ticks count.
pub fn between(a: &Snapshot, b: &Snapshot, seconds: f64) -> Breakdown {
    let mut ticks: HashMap<Group, u64> = HashMap::new();
    for (key, (group, now)) in &b.processes {
        let before = a.processes.get(key).map_or(0, |(_, t)| *t);
        *ticks.entry(*group).or_default() += now.saturating_sub(before);
    }
    let cores = |t: u64| t as f64 / crate::gen::CLOCK_TICKS_PER_SECOND / seconds.max(1e-9);
    let of = |g: Group| cores(ticks.get(&g).copied().unwrap_or(0));
    let charged: u64 = ticks.values().sum();
    let (a, b) = (&a.machine, &b.machine);
    let (busy, irq, total) = (b.busy - a.busy.min(b.busy), b.irq - a.irq.min(b.irq), b.total - a.total.min(b.total));
    Breakdown {
        responder_user: of(Group::ResponderUser),
        responder_system: of(Group::ResponderSystem),
        postgres_backends: of(Group::PostgresBackends),
        postgres_other: of(Group::PostgresOther),
        redis: of(Group::Redis),
        generator: of(Group::Generator),
        other_processes: of(Group::Other),
        outside_processes: cores(busy.saturating_sub(charged)),
        kernel_irq: cores(irq),
        idle: cores(total - busy),
        cores: cores(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_run_database_and_redis_port() {
        let who = Who::new(
            vec![7],
            Some("postgres://u:p@127.0.0.1:5432/jitocsp_loadtest?sslmode=disable"),
            Some("redis://127.0.0.1:63799/3"),
        );
        assert_eq!(who.database.as_deref(), Some("jitocsp_loadtest"));
        assert_eq!(who.redis_port, Some(63799));
    }

    #[test]
    fn a_step_counts_only_what_was_used_within_it() {
        let mut a = Snapshot { machine: MachineTicks { busy: 100, irq: 10, total: 300 }, ..Default::default() };
        a.processes.insert((1, false), (Group::ResponderUser, 50));
        a.processes.insert((1, true), (Group::ResponderSystem, 20));
        a.processes.insert((2, false), (Group::PostgresBackends, 5));
        let mut b = Snapshot { machine: MachineTicks { busy: 260, irq: 30, total: 500 }, ..Default::default() };
        b.processes.insert((1, false), (Group::ResponderUser, 110));
        b.processes.insert((1, true), (Group::ResponderSystem, 40));
        b.processes.insert((2, false), (Group::PostgresBackends, 35));
        // Started between the samples.
        b.processes.insert((3, false), (Group::Redis, 10));
        let d = between(&a, &b, 1.0);
        assert_eq!((d.responder_user, d.responder_system, d.postgres_backends, d.redis), (0.6, 0.2, 0.3, 0.1));
        assert_eq!((d.kernel_irq, d.idle, d.cores), (0.2, 0.4, 2.0));
        // 160 busy - (60 + 20 + 30 + 10) charged.
        assert!((d.outside_processes - 0.4).abs() < 1e-9, "{d:?}");
    }
}
