//! The shared test services as fault tests handle them: the Redis Cluster's nodes (found,
//! killed), and the scripts/services.sh commands that put everything back afterwards.

use std::process::Command;

/// Runs scripts/services.sh COMMAND for each command when dropped, however the test ends:
/// e.g. `Restore(&["cluster-up"])` restarts the cluster nodes a test killed. Panics if a
/// command fails, unless the test is already panicking.
pub struct Restore(pub &'static [&'static str]);

impl Drop for Restore {
    fn drop(&mut self) {
        for command in self.0 {
            if let Err(error) = try_services(command) {
                if !std::thread::panicking() {
                    panic!("scripts/services.sh {command} could not restore the test services: {error}");
                }
            }
        }
    }
}

/// Runs scripts/services.sh COMMAND; panics if it fails.
pub fn services(command: &str) {
    if let Err(error) = try_services(command) {
        panic!("scripts/services.sh {command}: {error}");
    }
}

fn try_services(command: &str) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let output = Command::new("bash").args([script, command]).output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The seed nodes (HOST:PORT) of the test Redis Cluster (`JITOCSP_TEST_REDIS_CLUSTER`).
pub fn cluster_seeds() -> Vec<String> {
    seeds_in("JITOCSP_TEST_REDIS_CLUSTER")
}

/// The seed nodes (HOST:PORT) of the TLS-only test Redis Cluster
/// (`JITOCSP_TEST_REDIS_CLUSTER_TLS`, scripts/services.sh cluster-tls-up).
pub fn cluster_tls_seeds() -> Vec<String> {
    seeds_in("JITOCSP_TEST_REDIS_CLUSTER_TLS")
}

fn seeds_in(name: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_default().split(',').map(str::to_owned).collect()
}

/// The settings of a responder using the test Redis Cluster (`redis.mode = "cluster"`), its
/// Redis timeout short so that a dead primary is noticed quickly by each request needing it.
pub fn cluster_env() -> Vec<(&'static str, String)> {
    let seeds = cluster_seeds();
    vec![
        ("REDIS_URL", format!("redis://{}", seeds[0])),
        ("JITOCSP_REDIS_MODE", "cluster".to_owned()),
        ("JITOCSP_REDIS_NODES", seeds.iter().map(|s| format!("redis://{s}")).collect::<Vec<_>>().join(",")),
        ("JITOCSP_REDIS_TIMEOUT_MS", "250".to_owned()),
    ]
}

/// `redis-cli -p PORT ARGS...`: its standard output.
pub fn redis_cli(port: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&redis_cli_raw(&[], port, args)).into_owned()
}

/// `redis-cli OPTIONS... -p PORT ARGS...`: its standard output as bytes (a value may be binary).
pub fn redis_cli_raw(options: &[&str], port: &str, args: &[&str]) -> Vec<u8> {
    Command::new("redis-cli").args(options).args(["-p", port]).args(args).output().expect("redis-cli").stdout
}

/// The ports of the primaries that serve slots, from `CLUSTER NODES` output.
pub fn primaries_serving_slots(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
        .filter_map(|l| l.split(' ').nth(1)?.split('@').next()?.rsplit(':').next().map(str::to_owned))
        .collect()
}

/// (port, pid) of a cluster primary that serves slots, other than the node at `seed_port`.
pub fn cluster_primary_other_than(seed_port: &str) -> (String, u32) {
    let nodes = redis_cli(seed_port, &["cluster", "nodes"]);
    let port =
        primaries_serving_slots(&nodes).into_iter().find(|p| p != seed_port).expect("a primary other than the seed");
    let pid = redis_cli(&port, &["info", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("the primary's process id");
    (port, pid)
}

/// Whether the cluster has marked the node at `port` as failed (its replica then takes over).
pub fn cluster_node_failed(seed_port: &str, port: &str) -> bool {
    let needle = format!("127.0.0.1:{port}@");
    redis_cli(seed_port, &["cluster", "nodes"]).lines().any(|l| l.contains(&needle) && l.contains("fail"))
}

pub fn cluster_ok(seed_port: &str) -> bool {
    redis_cli(seed_port, &["cluster", "info"]).lines().any(|l| l.trim() == "cluster_state:ok")
}

/// SIGKILL.
pub fn kill_9(pid: u32) {
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill").success());
}
