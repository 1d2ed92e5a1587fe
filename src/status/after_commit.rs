//! What a committed change still owes: the Redis purge and the CDN hook call. Both are
//! recorded in the change's transaction, so a failure here leaves them owed (running
//! responders retry them) and never fails the change.

use tokio_postgres::Client;

use crate::config::Config;
use crate::purge::cdn::{self, CdnError, Delivery};
use crate::purge::pending::{self, PurgeOutcome, PurgeTarget, SettleWarning};

/// The purges a committed change owes.
#[derive(Debug, Default)]
#[must_use = "a committed change owes its purges"]
pub struct AfterCommit {
    /// One per changed certificate, settling the pending purge the change recorded.
    pub targets: Vec<PurgeTarget>,
    /// The `cdn_purges` rows the change recorded (none without a hook).
    pub cdn_ids: Vec<i64>,
}

/// What became of the CDN purges of a change.
#[derive(Debug)]
pub enum CdnOutcome {
    /// No hook configured, or nothing changed.
    NotOwed,
    /// More than [`cdn::ADMIN_INLINE_LIMIT`]: left to the running responders.
    Queued(usize),
    /// The hook was called for the `owed` purges.
    Called { owed: usize, delivery: Delivery },
    /// The hook could not be called now; the purges stay owed.
    Failed(CdnError),
}

impl AfterCommit {
    /// Deletes the changed certificates' Redis keys and settles their pending purges.
    pub async fn purge(&self, config: &Config, client: &Client) -> (PurgeOutcome, Vec<SettleWarning>) {
        pending::purge_now(config, client, &self.targets).await
    }

    /// Calls the CDN purge hook for the purges just committed, unless there are too many
    /// for one command to wait for.
    pub async fn deliver_cdn(&self, config: &Config, client: &Client) -> CdnOutcome {
        let owed = self.cdn_ids.len();
        if owed == 0 {
            return CdnOutcome::NotOwed;
        }
        if owed > cdn::ADMIN_INLINE_LIMIT {
            return CdnOutcome::Queued(owed);
        }
        match cdn::deliver(client, &config.cdn, &self.cdn_ids).await {
            Ok(delivery) => CdnOutcome::Called { owed, delivery },
            Err(e) => CdnOutcome::Failed(e),
        }
    }
}
