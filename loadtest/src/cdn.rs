//! Purging slices of an nginx proxy cache. Open-source nginx has no purge API; deleting a
//! cache file makes the next request for its URL a MISS (nginx finds the file gone, fetches
//! from the origin and stores it again). A cache file is named by the MD5 of the
//! `proxy_cache_key` and placed under the `levels` layout: with `levels=1:2`, the key whose
//! MD5 ends in `...9c2f` lives in `f/c2/<md5>` (the last hex digit, then the two before it).

use std::path::{Path, PathBuf};

use md5::{Digest as _, Md5};

use crate::corpus::{purge_slice, Corpus};
use crate::gen::{get_path, Requested};

/// Where nginx keeps one URL's cached response.
pub fn cache_file(dir: &Path, levels: &[usize], key: &str) -> PathBuf {
    let digest = Md5::digest(key.as_bytes());
    let hex = hex_lower(&digest);
    let mut path = dir.to_path_buf();
    let mut end = hex.len();
    for level in levels {
        path.push(&hex[end - level..end]);
        end -= level;
    }
    path.push(&hex);
    path
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses nginx's `levels=1:2` value.
pub fn parse_levels(text: &str) -> anyhow::Result<Vec<usize>> {
    let levels: Vec<usize> = text.split(':').map(str::parse).collect::<Result<_, _>>()?;
    if levels.is_empty() || levels.len() > 3 || levels.iter().any(|l| !(1..=2).contains(l)) {
        anyhow::bail!("levels {text:?}: expected 1 to 3 numbers of 1 or 2 separated by ':'");
    }
    Ok(levels)
}

/// How nginx keys a GET: `proxy_cache_key "$jitocsp_cache_method $request_uri"` in
/// deploy/nginx/jitocsp-cdn.conf.
pub fn cache_key(uri: &str) -> String {
    format!("GET {uri}")
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PurgeResult {
    pub fraction: f64,
    /// Requested URLs whose serial falls in the purged slices.
    pub urls: u64,
    /// Cache files deleted (the others were not cached: never answered, or not cacheable).
    pub removed: u64,
    pub seconds: f64,
}

/// Deletes the cache files of every requested GET URL whose serial's last octet is below
/// `fraction * 256` (the share `fraction` of the cache, sliced by serial like a purge by tag).
pub fn purge(
    dir: &Path,
    levels: &[usize],
    prefix: &str,
    corpus: &Corpus,
    requested: &Requested,
    fraction: f64,
) -> PurgeResult {
    let started = std::time::Instant::now();
    let limit = (fraction * 256.0).round().clamp(0.0, 256.0) as u16;
    let mut result = PurgeResult { fraction, ..PurgeResult::default() };
    requested.each(|issuer, index, alg| {
        let iss = &corpus.issuers[issuer as usize];
        if u16::from(purge_slice(&iss.serial(index))) >= limit {
            return;
        }
        result.urls += 1;
        let uri = get_path(prefix, &iss.request(index, alg).der);
        if std::fs::remove_file(cache_file(dir, levels, &cache_key(&uri))).is_ok() {
            result.removed += 1;
        }
    });
    result.seconds = started.elapsed().as_secs_f64();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_layout() {
        // nginx documentation example: levels=1:2 -> /data/nginx/cache/c/29/b7f54b2df7773722d382f4809d65029c
        let digest = "b7f54b2df7773722d382f4809d65029c";
        let mut path = PathBuf::from("/data/nginx/cache");
        path.push(&digest[31..]);
        path.push(&digest[29..31]);
        path.push(digest);
        assert_eq!(path, PathBuf::from("/data/nginx/cache/c/29/b7f54b2df7773722d382f4809d65029c"));
        let p = cache_file(Path::new("/c"), &[1, 2], "GET /x");
        let hex = hex_lower(&Md5::digest(b"GET /x"));
        assert_eq!(p, PathBuf::from(format!("/c/{}/{}/{hex}", &hex[31..], &hex[29..31])));
        assert_eq!(parse_levels("1:2").unwrap(), vec![1, 2]);
        assert!(parse_levels("3").is_err());
    }
}
