//! A status store per HTTP worker: each worker's reads go out on connections its own thread
//! drives, batched by a batcher of its own.
//!
//! With one store for the process, a worker's miss went through a batcher and a connection
//! driven on the main runtime's threads: a hand-off there and a wake-up back for every
//! batch, about a fifth of jitocsp's CPU at a full cache drop (docs/benchmarks.md). Per
//! worker (see [`crate::runtime_local`]), a read is written and its answer read by the
//! worker that asked. The pools and read slots of `database.pool_size` and
//! `database.read_concurrency` are divided among the workers ([`Shares`]), so the instance
//! as a whole opens about as many connections as one store did (each share is rounded up,
//! and a worker's read slots always have their connections) and runs as many queries at once.

use std::sync::Arc;

use super::postgres::PoolSizes;
use super::{ReadFrom, StatusRead, StatusStore, StoreError};
use crate::runtime_local::PerRuntime;
use crate::serial::Serial;

/// How a per-runtime store is made.
type Make<S> = Box<dyn Fn() -> Result<S, StoreError> + Send + Sync>;

/// `database.pool_size` and `database.read_concurrency` divided among `workers` runtimes
/// (rounded up, at least 1 each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    pub pools: PoolSizes,
    pub read_concurrency: usize,
}

impl Shares {
    pub fn of(pool_size: usize, read_concurrency: usize, workers: usize) -> Shares {
        let read_concurrency = read_concurrency.div_ceil(workers.max(1)).max(1);
        // A worker's batched reads must not wait for its own pool.
        Shares { pools: PoolSizes::of(pool_size).divided(workers, read_concurrency), read_concurrency }
    }
}

/// A [`StatusStore`] made once per thread and runtime that reads through it.
pub struct PerRuntimeStore<S> {
    stores: PerRuntime<Arc<S>>,
    make: Make<S>,
}

impl<S: StatusStore> PerRuntimeStore<S> {
    /// `make` runs on each worker's first read, on that worker (so that what it spawns, the
    /// batcher and the connections, runs there). It should not touch the network.
    pub fn new(make: impl Fn() -> Result<S, StoreError> + Send + Sync + 'static) -> Self {
        PerRuntimeStore { stores: PerRuntime::new(), make: Box::new(make) }
    }

    fn local(&self) -> Result<Arc<S>, StoreError> {
        self.stores.get(|| (self.make)().map(Arc::new))
    }
}

impl<S: StatusStore> StatusStore for PerRuntimeStore<S> {
    async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<StatusRead, StoreError> {
        self.local()?.lookup(keys, from).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.local()?.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn shares_divide_the_instance_settings_among_workers() {
        let shares = |pool, reads, workers| {
            let s = Shares::of(pool, reads, workers);
            (s.pools.reads, s.pools.primary_beside_replica, s.read_concurrency)
        };
        // The defaults on 2 cores: the instance keeps 16 read and 8 primary connections, 4 slots.
        assert_eq!(shares(16, 4, 2), (8, 4, 2));
        assert_eq!(shares(16, 4, 1), (16, 8, 4));
        // Many workers: never less than one slot and one connection each, nor a read pool
        // smaller than the slots; the primary's share does not grow with the worker count.
        assert_eq!(shares(16, 4, 16), (1, 1, 1));
        assert_eq!(shares(2, 8, 2), (4, 1, 4));
    }

    /// Counts the stores made; answers every key as unknown.
    struct Made;

    impl StatusStore for Made {
        async fn lookup(&self, keys: &[(i32, Serial)], _: ReadFrom) -> Result<StatusRead, StoreError> {
            Ok(StatusRead { records: vec![None; keys.len()], replayed: None })
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn each_runtime_reads_through_a_store_of_its_own() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let store = PerRuntimeStore::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Made)
        });
        let key = [(1, Serial::from_unsigned_be(&[1]).unwrap())];
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                for _ in 0..3 {
                    assert_eq!(store.lookup(&key, ReadFrom::Replica).await.unwrap().records, vec![None]);
                }
            });
        }
        assert_eq!(made.load(Ordering::SeqCst), 2, "one store per runtime, kept across reads");
    }
}
