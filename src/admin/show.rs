//! `admin status` and `admin audit`: read-only views.
//!
//! `status` prints the database's view (the truth) and the cache's: for each of the four
//! Redis keys a certificate can have (see `cache::keys`), whether it exists and its TTL, and
//! any pending purge. When Redis cannot be reached, `status` says so and still succeeds: the
//! status itself came from Postgres.

use chrono::{DateTime, SecondsFormat, Utc};

use super::inputs::{parse_serial, Origin};
use super::purge::admin_redis_timeout;
use super::{connect, db, find_issuer, AdminError, AuditArgs, CertArgs};
use crate::cache::keys::all_response_keys;
use crate::cache::redis::RedisMode;
use crate::config::Config;
use crate::ocsp::RevocationReason;
use crate::serial::Serial;

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)).unwrap_or_else(|| "-".to_owned())
}

pub async fn status(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    let row = client
        .query_opt(
            "SELECT not_after, reason, revoked_at, changed_at FROM certificates \
             WHERE issuer_id = $1 AND serial = $2",
            &[&issuer.id, &serial.as_bytes()],
        )
        .await
        .map_err(db("reading the certificate"))?;
    println!("issuer:      {} (id {})", issuer.name, issuer.id);
    println!("serial:      {serial}");
    match &row {
        None => println!(
            "status:      unknown to this responder (no row; requests get the configured \
             `responses.unissued` answer, never good)"
        ),
        Some(row) => {
            let not_after: DateTime<Utc> = row.get(0);
            let reason: Option<i16> = row.get(1);
            let revoked_at: Option<DateTime<Utc>> = row.get(2);
            let changed_at: Option<DateTime<Utc>> = row.get(3);
            match reason {
                None => println!("status:      good"),
                Some(_) => println!("status:      revoked"),
            }
            println!("reason:      {}", reason.map(RevocationReason::describe_code).unwrap_or_else(|| "-".to_owned()));
            println!("revoked_at:  {}", time(revoked_at));
            println!("changed_at:  {}", time(changed_at));
            println!(
                "not_after:   {}{}",
                time(Some(not_after)),
                if not_after < Utc::now() { " (expired)" } else { "" }
            );
        }
    }
    let pending = client
        .query_opt(
            "SELECT since, attempts, last_error FROM pending_purges WHERE issuer_id = $1 AND serial = $2",
            &[&issuer.id, &serial.as_bytes()],
        )
        .await
        .map_err(db("reading pending_purges"))?;
    match pending {
        None => println!("pending purge: none"),
        Some(p) => {
            let since: DateTime<Utc> = p.get(0);
            let attempts: i32 = p.get(1);
            let last_error: Option<String> = p.get(2);
            println!(
                "pending purge: since {}, {attempts} failed attempt(s){}",
                time(Some(since)),
                last_error.map(|e| format!(", last error: {e}")).unwrap_or_default()
            );
        }
    }
    let keys = all_response_keys(&config.cache.key_prefix, issuer.id, &serial);
    match key_ttls(config, &keys).await {
        Ok(ttls) => {
            println!("cache:");
            for (key, ttl) in keys.iter().zip(ttls) {
                let state = match ttl {
                    -2 => "absent".to_owned(),
                    -1 => "present, no TTL".to_owned(),
                    ms => format!(
                        "present, ttl {}",
                        humantime::format_duration(std::time::Duration::from_secs((ms as u64).div_ceil(1000)))
                    ),
                };
                println!("  {key}  {state}");
            }
        }
        Err(e) => println!("cache:       unknown: Redis unreachable ({e})"),
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
            RedisMode::Sharded => Err("redis.mode \"sharded\" is not available in this version".to_owned()),
        }
    };
    match tokio::time::timeout(timeout * 2, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", timeout * 2)),
    }
}

pub async fn audit(args: AuditArgs, config: &Config) -> Result<(), AdminError> {
    if args.limit < 1 {
        return Err(AdminError::input(format!("--limit {} must be at least 1", args.limit)));
    }
    let client = connect(config).await?;
    let rows = client
        .query(
            "SELECT a.id, a.at, a.actor, a.action, i.name, a.serial, a.before::text, a.after::text \
             FROM audit_log a LEFT JOIN issuers i ON i.id = a.issuer_id \
             ORDER BY a.id DESC LIMIT $1",
            &[&args.limit],
        )
        .await
        .map_err(db("reading the audit log"))?;
    if rows.is_empty() {
        println!("the audit log is empty");
    }
    for row in rows.iter().rev() {
        let id: i64 = row.get(0);
        let at: DateTime<Utc> = row.get(1);
        let actor: String = row.get(2);
        let action: String = row.get(3);
        let issuer: Option<String> = row.get(4);
        let serial: Option<Vec<u8>> = row.get(5);
        let before: Option<String> = row.get(6);
        let after: Option<String> = row.get(7);
        let serial = serial.map(|s| Serial::from_signed_be(&s).map(|s| s.to_hex()).unwrap_or_else(|_| hex::encode(&s)));
        println!(
            "#{id}\t{}\t{actor}\t{action}\tissuer={}\tserial={}\tbefore={}\tafter={}",
            time(Some(at)),
            issuer.as_deref().unwrap_or("-"),
            serial.as_deref().unwrap_or("-"),
            before.as_deref().unwrap_or("-"),
            after.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}
