//! The Redis tier: one shared cache of encoded responses for every instance.
//!
//! Single-node Redis goes through a `ConnectionManager` (a multiplexed connection that
//! reconnects by itself) per thread that uses it (see `SingleNode`); Redis Cluster through
//! the cluster client, which routes by slot. Connections are made lazily, so a responder
//! starts and serves (from Postgres and the signer) while Redis is down, and uses Redis again
//! as soon as it is back.
//!
//! `rediss://` URLs are TLS (redis-rs on rustls with the ring provider): the server's
//! certificate and host name are verified against `redis.tls_ca_file`, or the system roots
//! (see [`crate::tls`]), and `redis.tls_cert_file`/`tls_key_file` are shown when set. Every
//! Redis client of jitocsp (responder, admin CLI) is made by [`client`] or [`cluster_builder`].

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{ClientTlsConfig, TlsCertificates};
use bytes::Bytes;

use super::{CacheError, ResponseCache};
use crate::runtime_local::PerRuntime;
use crate::tls::TlsFiles;

/// A client for one Redis server: TLS for a `rediss://` URL, plaintext otherwise.
pub fn client(url: &str, tls: &TlsFiles) -> Result<::redis::Client, CacheError> {
    if is_tls(url) {
        Ok(::redis::Client::build_with_tls(url, certificates(tls)?)?)
    } else {
        Ok(::redis::Client::open(url)?)
    }
}

/// A cluster client builder for `seeds`: TLS when they are `rediss://` URLs (a cluster is
/// all TLS or all plaintext; the nodes it announces are reached the same way as the seeds).
pub fn cluster_builder(seeds: &[&str], tls: &TlsFiles) -> Result<ClusterClientBuilder, CacheError> {
    let builder = ClusterClientBuilder::new(seeds.to_vec());
    match seeds.iter().filter(|s| is_tls(s)).count() {
        0 => Ok(builder),
        n if n == seeds.len() => Ok(builder.certs(certificates(tls)?)),
        _ => Err(CacheError::Config("redis.nodes mixes rediss:// and redis:// URLs; use one scheme".into())),
    }
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The files in the form redis-rs takes. Without a CA file redis-rs trusts the system roots
/// (rustls-native-certs), as the Postgres side does; with one, only that CA.
fn certificates(tls: &TlsFiles) -> Result<TlsCertificates, CacheError> {
    // redis-rs builds its rustls configuration with the process-default provider: ring.
    crate::tls::provider();
    let material = tls.load()?;
    Ok(TlsCertificates {
        client_tls: material.identity.map(|id| ClientTlsConfig { client_cert: id.cert_pem, client_key: id.key_pem }),
        root_cert: material.ca_pem,
    })
}

/// Which Redis topology to talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Single,
    /// Redis Cluster: the sharding engine, with its replicas and failover.
    Cluster,
}

#[derive(Clone)]
enum Connection {
    Single(Arc<SingleNode>),
    Cluster(ClusterConnection),
}

/// One Redis server, reached by one multiplexed connection per thread (and runtime) that
/// uses it: see [`crate::runtime_local`]. Shared by the HTTP workers, a connection took
/// 0.7-0.8 thread wake-ups per hot answer, against 0.3 with one per thread
/// (docs/benchmarks.md).
struct SingleNode {
    client: ::redis::Client,
    config: ConnectionManagerConfig,
    connections: PerRuntime<ConnectionManager>,
}

impl SingleNode {
    /// This thread's connection, made on first use.
    fn connection(&self) -> Result<ConnectionManager, CacheError> {
        self.connections.get(|| Ok(ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?))
    }
}

/// The Redis response cache.
#[derive(Clone)]
pub struct RedisCache {
    connection: Connection,
}

impl RedisCache {
    /// Prepares a connection to `url` (single) or to the cluster seeded by `nodes` (cluster).
    /// Single mode does not touch the network here; cluster mode reads the slot map once.
    pub async fn connect(
        mode: RedisMode,
        url: &str,
        nodes: &[String],
        tls: &TlsFiles,
        timeout: Duration,
    ) -> Result<Self, CacheError> {
        let connection = match mode {
            RedisMode::Single => {
                let client = client(url, tls)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Connection::Single(Arc::new(SingleNode { client, config, connections: PerRuntime::new() }))
            }
            RedisMode::Cluster => {
                let seeds: Vec<&str> =
                    if nodes.is_empty() { vec![url] } else { nodes.iter().map(String::as_str).collect() };
                let client = cluster_builder(&seeds, tls)?
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        };
        Ok(RedisCache { connection })
    }

    /// Runs one command. Each attempt is bounded by the client's response and connection
    /// timeouts, and reconnection by one retry with at most 500 ms of back-off, so no outer
    /// timer is needed per command.
    async fn run<T: ::redis::FromRedisValue + Send>(&self, cmd: ::redis::Cmd) -> Result<T, CacheError> {
        Ok(match &self.connection {
            Connection::Single(node) => cmd.query_async(&mut node.connection()?).await?,
            Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await?,
        })
    }

    /// Round-trips a PING: what `/readyz` asks.
    pub async fn ping(&self) -> Result<(), CacheError> {
        self.run::<String>(::redis::cmd("PING")).await.map(drop)
    }
}

impl ResponseCache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(key);
        let value: Option<Vec<u8>> = self.run(cmd).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(key).arg(value.as_ref()).arg("PX").arg(ttl.as_millis().max(1) as u64);
        self.run::<()>(cmd).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(keys);
        self.run::<()>(cmd).await
    }
}
