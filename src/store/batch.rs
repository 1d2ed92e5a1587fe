//! Batches the status reads of concurrent misses into one query.
//!
//! A cache drop sends thousands of misses a second, each wanting one row. Each query costs
//! Postgres a parse/bind/execute round trip whatever its size, so reads that arrive while
//! the previous queries are running are collected and sent together. There is no timer: at
//! low load every read goes alone, at once; batches form only when all `concurrency` query
//! slots are busy, which is exactly when the round trips are the bottleneck. So the slots
//! are few (`database.read_concurrency`, 4 by default): with as many as the pool's
//! connections (16), a 2-core Postgres ran a query per 3 misses at a full cache drop, most
//! of them for one row, each costing it as much as a full batch.
//!
//! Reads from the replica (the ordinary ones) and from the primary are batched apart, each
//! with its own slots. Primary reads are rare until the change feed goes unproven: then every
//! cached response is confirmed with the primary before it is served, and one query per
//! request would load the primary most when it can least afford it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{CertRecord, Lsn, ReadFrom, StatusRead, StatusStore, StoreError};
use crate::serial::Serial;

/// Most rows read by one query.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<(Option<CertRecord>, Option<Lsn>), String>>;

struct Job {
    key: (i32, Serial),
    reply: Reply,
}

/// A [`StatusStore`] that batches single-certificate reads over an inner store.
pub struct Batching<S> {
    inner: Arc<S>,
    replica_jobs: mpsc::UnboundedSender<Job>,
    primary_jobs: mpsc::UnboundedSender<Job>,
}

impl<S: StatusStore> Batching<S> {
    /// Wraps `inner`, running at most `concurrency` queries at once on each of the replica
    /// and the primary. Spawns the batchers on the current Tokio runtime; they stop when the
    /// `Batching` is dropped.
    pub fn new(inner: S, concurrency: usize) -> Self {
        let inner = Arc::new(inner);
        let batcher = |from| {
            let (jobs, queue) = mpsc::unbounded_channel();
            tokio::spawn(run(inner.clone(), from, queue, Arc::new(Semaphore::new(concurrency.max(1)))));
            jobs
        };
        let (replica_jobs, primary_jobs) = (batcher(ReadFrom::Replica), batcher(ReadFrom::Primary));
        Batching { inner, replica_jobs, primary_jobs }
    }

    #[cfg(test)]
    fn inner(&self) -> &S {
        &self.inner
    }
}

async fn run<S: StatusStore>(
    inner: Arc<S>,
    from: ReadFrom,
    mut queue: mpsc::UnboundedReceiver<Job>,
    slots: Arc<Semaphore>,
) {
    while let Some(first) = queue.recv().await {
        // Wait for a free query slot first: while waiting, more reads queue up and join.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let keys: Vec<(i32, Serial)> = jobs.iter().map(|j| j.key.clone()).collect();
            metrics::histogram!(crate::metrics::DB_BATCH_SIZE).record(keys.len() as f64);
            match inner.lookup(&keys, from).await {
                Ok(read) => {
                    for (job, record) in jobs.into_iter().zip(read.records) {
                        let _ = job.reply.send(Ok((record, read.replayed)));
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    for job in jobs {
                        let _ = job.reply.send(Err(message.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

impl<S: StatusStore> StatusStore for Batching<S> {
    async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<StatusRead, StoreError> {
        // Requests for several certificates are already one query.
        let [key] = keys else { return self.inner.lookup(keys, from).await };
        let jobs = match from {
            ReadFrom::Replica => &self.replica_jobs,
            ReadFrom::Primary => &self.primary_jobs,
        };
        let (reply, answer) = oneshot::channel();
        jobs.send(Job { key: key.clone(), reply }).map_err(|_| StoreError::Batched("batcher stopped".into()))?;
        match answer.await {
            Ok(Ok((record, replayed))) => Ok(StatusRead { records: vec![record], replayed }),
            Ok(Err(message)) => Err(StoreError::Batched(message)),
            Err(_) => Err(StoreError::Batched("batcher dropped the read".into())),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Answers every key as issued, slowly, counting queries.
    #[derive(Default)]
    struct SlowStore {
        queries: AtomicUsize,
        rows: AtomicUsize,
        primary_rows: AtomicUsize,
    }

    impl StatusStore for SlowStore {
        async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<StatusRead, StoreError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            self.rows.fetch_add(keys.len(), Ordering::SeqCst);
            if from == ReadFrom::Primary {
                self.primary_rows.fetch_add(keys.len(), Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let record = |(_, serial): &(i32, Serial)| {
                Some(CertRecord {
                    not_after: DateTime::from_timestamp(serial.as_bytes()[0] as i64, 0).unwrap(),
                    revocation: None,
                    version: 0,
                })
            };
            Ok(StatusRead { records: keys.iter().map(record).collect(), replayed: None })
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// 100 concurrent single reads from `from`: each gets its own row, in a few queries.
    async fn share_queries(from: ReadFrom) -> Batching<SlowStore> {
        let store = Batching::new(SlowStore::default(), 1);
        let reads = (1..=100u8).map(|i| {
            let store = &store;
            async move {
                let serial = Serial::from_unsigned_be(&[i]).unwrap();
                let read = store.lookup(&[(1, serial)], from).await.unwrap();
                assert_eq!(read.records[0].as_ref().unwrap().not_after.timestamp(), i as i64, "row {i}");
            }
        });
        futures_util::future::join_all(reads).await;
        let queries = store.inner().queries.load(Ordering::SeqCst);
        assert_eq!(store.inner().rows.load(Ordering::SeqCst), 100);
        assert!(queries < 10, "100 concurrent reads took {queries} queries");
        store
    }

    #[tokio::test]
    async fn concurrent_reads_share_queries_and_each_gets_its_own_row() {
        let store = share_queries(ReadFrom::Replica).await;
        assert_eq!(store.inner().primary_rows.load(Ordering::SeqCst), 0);
    }

    /// While the feed is unproven every cached response is confirmed with the primary: those
    /// reads share queries too, and stay on the primary.
    #[tokio::test]
    async fn concurrent_primary_reads_share_queries_on_the_primary() {
        let store = share_queries(ReadFrom::Primary).await;
        assert_eq!(store.inner().primary_rows.load(Ordering::SeqCst), 100);
    }

    struct DownStore;

    impl StatusStore for DownStore {
        async fn lookup(&self, _: &[(i32, Serial)], _: ReadFrom) -> Result<StatusRead, StoreError> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(StoreError::Pool("connection refused".into()))
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_query_fails_every_read_in_it() {
        let store = Batching::new(DownStore, 1);
        let store = &store;
        let reads = (1..=20u8).map(|i| async move {
            store.lookup(&[(1, Serial::from_unsigned_be(&[i]).unwrap())], ReadFrom::Replica).await
        });
        for result in futures_util::future::join_all(reads).await {
            let error = result.unwrap_err().to_string();
            assert!(error.contains("connection refused"), "{error}");
        }
    }
}
