//! `admin status` and `admin audit`: read-only views.
//!
//! `status` prints the database's view (the truth) and the cache's: for each of the four
//! Redis keys a certificate can have (see `cache::keys`), whether it exists and its TTL, and
//! any pending purge. When Redis cannot be reached, `status` says so and still succeeds: the
//! status itself came from Postgres.

use chrono::{DateTime, SecondsFormat, Utc};

use super::inputs::{parse_serial, Origin};
use super::listing::{say, Listing};
use super::{connect, db, find_issuer, AdminError, AuditArgs, CertArgs};
use crate::cache::keys::all_response_keys;
use crate::cache::redis::RedisMode;
use crate::config::Config;
use crate::db::{audit_log, certificates, pending_purges};
use crate::ocsp::RevocationReason;
use crate::purge::pending::admin_redis_timeout;
use crate::serial::Serial;

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)).unwrap_or_else(|| "-".to_owned())
}

pub async fn status(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    let row = certificates::one(&client, issuer.id, serial.as_bytes()).await.map_err(db("reading the certificate"))?;
    say!("issuer:      {} (id {})", issuer.name, issuer.id);
    say!("serial:      {serial}");
    match &row {
        None => say!(
            "status:      unknown to this responder (no row; requests get the configured \
             `responses.unissued` answer, never good)"
        ),
        Some(row) => {
            match row.status.reason {
                None => say!("status:      good"),
                Some(_) => say!("status:      revoked"),
            }
            say!(
                "reason:      {}",
                row.status.reason.map(RevocationReason::describe_code).unwrap_or_else(|| "-".to_owned())
            );
            say!("revoked_at:  {}", time(row.status.revoked_at));
            say!("changed_at:  {}", time(row.changed_at));
            say!(
                "not_after:   {}{}",
                time(Some(row.not_after)),
                if row.not_after < Utc::now() { " (expired)" } else { "" }
            );
        }
    }
    let pending = pending_purges::for_certificate(&client, issuer.id, serial.as_bytes())
        .await
        .map_err(db("reading the pending purges"))?;
    match pending {
        None => say!("pending purge: none"),
        Some(p) => say!(
            "pending purge: since {}, {} failed attempt(s){}",
            time(Some(p.since)),
            p.attempts,
            p.last_error.map(|e| format!(", last error: {e}")).unwrap_or_default()
        ),
    }
    let keys = all_response_keys(&config.cache.key_prefix, issuer.id, &serial);
    match key_ttls(config, &keys).await {
        Ok(ttls) => {
            say!("cache:");
            for (key, ttl) in keys.iter().zip(ttls) {
                let state = match ttl {
                    -2 => "absent".to_owned(),
                    -1 => "present, no TTL".to_owned(),
                    ms => format!(
                        "present, ttl {}",
                        humantime::format_duration(std::time::Duration::from_secs((ms as u64).div_ceil(1000)))
                    ),
                };
                say!("  {key}  {state}");
            }
        }
        Err(e) => say!("cache:       unknown: Redis unreachable ({e})"),
    }
    Ok(())
}

/// `PTTL` of each key: -2 absent, -1 no expiry, else milliseconds left.
async fn key_ttls(config: &Config, keys: &[String]) -> Result<Vec<i64>, String> {
    let timeout = admin_redis_timeout(config);
    let work = async {
        let mut pipe = redis::pipe();
        match config.redis.mode {
            RedisMode::Single => {
                for key in keys {
                    pipe.cmd("PTTL").arg(key);
                }
                let client = crate::cache::redis::client(&config.redis.url, &config.redis.tls_files())
                    .map_err(|e| e.to_string())?;
                let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
                pipe.query_async::<Vec<i64>>(&mut conn).await.map_err(|e| e.to_string())
            }
            RedisMode::Cluster => {
                let seeds: Vec<&str> = if config.redis.nodes.is_empty() {
                    vec![config.redis.url.as_str()]
                } else {
                    config.redis.nodes.iter().map(String::as_str).collect()
                };
                let client = crate::cache::redis::cluster_builder(&seeds, &config.redis.tls_files())
                    .map_err(|e| e.to_string())?
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut conn = client.get_async_connection().await.map_err(|e| e.to_string())?;
                let mut ttls = Vec::with_capacity(keys.len());
                for key in keys {
                    let ttl: i64 =
                        redis::cmd("PTTL").arg(key).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                    ttls.push(ttl);
                }
                Ok(ttls)
            }
        }
    };
    match tokio::time::timeout(timeout * 2, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", timeout * 2)),
    }
}

pub async fn audit(args: AuditArgs, config: &Config) -> Result<(), AdminError> {
    if args.verify {
        let client = connect(config).await?;
        let verified = crate::audit::verify(&client).await?;
        say!(
            "audit log verified: {} rows, chain intact; head: position {}, sha256 {}",
            verified.rows,
            verified.head_seq,
            hex::encode(verified.head_hash)
        );
        return Ok(());
    }
    if args.limit < 1 {
        return Err(AdminError::input(format!("--limit {} must be at least 1", args.limit)));
    }
    let client = connect(config).await?;
    let entries = audit_log::newest(&client, args.limit).await.map_err(db("reading the audit log"))?;
    if entries.is_empty() {
        say!("the audit log is empty");
    }
    let mut out = Listing::new();
    for e in entries.iter().rev() {
        let serial =
            e.serial.as_ref().map(|s| Serial::from_signed_be(s).map(|s| s.to_hex()).unwrap_or_else(|_| hex::encode(s)));
        out.line(format_args!(
            "#{}\t{}\t{}\t{}\tissuer={}\tserial={}\tbefore={}\tafter={}",
            e.id,
            time(Some(e.at)),
            e.actor,
            e.action,
            e.issuer.as_deref().unwrap_or("-"),
            serial.as_deref().unwrap_or("-"),
            e.before.as_deref().unwrap_or("-"),
            e.after.as_deref().unwrap_or("-"),
        ));
    }
    out.finish().map_err(AdminError::Output)
}
