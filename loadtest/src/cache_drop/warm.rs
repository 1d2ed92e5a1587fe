//! The warm-up phase: every certificate requested once through the target before the steps
//! (origin mode with `--warm`: a warm Redis; cdn mode always: the CDN's cache, and with
//! `--unlink-after-warm` only the CDN's: the responder's Redis keys are unlinked after).

use std::sync::Arc;

use super::CdnCache;
use crate::cli::{CacheDropArgs, Mode};
use crate::closed;
use crate::corpus::HashAlg;
use crate::gen::{self, Ctx, Requested};
use crate::{cdn, report::WarmReport};

pub async fn run(
    args: &CacheDropArgs,
    ctx: &Arc<Ctx>,
    requested: &Arc<Requested>,
    cdn_cache: &CdnCache,
) -> anyhow::Result<Option<WarmReport>> {
    if !args.warm && args.mode != Mode::Cdn {
        return Ok(None);
    }
    let corpus = &ctx.corpus;
    let count = args.warm_count.unwrap_or(corpus.count);
    let list = closed::warm_list(corpus, count, args.load.sha256_share > 0.0);
    eprintln!("warming: {} requests through {}", list.len(), args.load.targets.join(", "));
    let w = closed::each_once(ctx, args.load.connections.min(64), list, Some(requested)).await;
    eprintln!("warm-up done: {} ok, {} failed, {:.1} s", w.ok, w.failed, w.seconds);
    if let Some((dir, levels)) = cdn_cache {
        // Prove the purge computes the paths nginx uses: the most popular URL must be cached.
        let uri = gen::get_path(ctx.prefix(), &corpus.issuers[0].request(0, HashAlg::Sha1).der);
        let file = cdn::cache_file(dir, levels, &cdn::cache_key(&uri));
        anyhow::ensure!(
            file.is_file(),
            "after warming, nginx has no cache file {} for {uri}: wrong --nginx-cache-dir, levels or key",
            file.display()
        );
    }
    if args.unlink_after_warm {
        let f = &args.find_max;
        let (Some(url), Some(prefix)) = (&f.redis_url, &f.key_prefix) else {
            anyhow::bail!("--unlink-after-warm needs --redis-url and --key-prefix");
        };
        let unlinked = super::find_max::unlink_prefix(url, prefix).await?;
        eprintln!("warm-up: unlinked {unlinked} Redis keys under {prefix}: (a cold Redis behind a warm CDN)");
    }
    Ok(Some(w))
}
