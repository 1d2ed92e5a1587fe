//! The audit trail an auditor can trust: every row names the authenticated database role
//! beside the claimed actor, no role can change or delete rows through SQL, and
//! `jitocsp admin audit --verify` finds a row that was changed, deleted or reordered anyway
//! (by the table owner, with the append-only triggers disabled), naming it and exiting 1.

mod common;

use common::*;

/// A database of its own with an issuer, an import, a revocation, a hold and its release:
/// every kind of status change in the audit log.
fn site_with_history() -> (Site, Pki, String) {
    let site = Site::with_own_database();
    let pki = Pki::new();
    let actor = [("JITOCSP_ACTOR", "alice; the\nauditor ✓")];
    let issuer = site.add_issuer_with(&pki, &format!("file:{}", pki.file("ca.key").display()), None, &actor);
    let leaf = pki.leaf("audited", "0a01");
    site.jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &actor);
    site.import_serials(&issuer, &["0a02", "0a03"], "2030-01-01T00:00:00Z");
    site.jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "0a01", "--reason", "keyCompromise"], &actor);
    site.jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "0a02", "--reason", "certificateHold"], &[]);
    site.jitocsp_ok(&["admin", "unrevoke", "--issuer", &issuer, "--serial", "0a02"], &[]);
    (site, pki, issuer)
}

/// `admin audit --verify`: exit status and the output (stdout and stderr).
fn verify(site: &Site) -> (i32, String) {
    let output = site.jitocsp(&["admin", "audit", "--verify"], &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Moves the rows at chain positions 2 and 3 into each other's place (run twice, restores).
const SWAP_SECOND_AND_THIRD: &str = "UPDATE audit_log SET chain_seq = -chain_seq WHERE chain_seq IN (2, 3); \
     UPDATE audit_log SET chain_seq = 5 + chain_seq WHERE chain_seq IN (-2, -3)";

/// Runs `statements` as the table owner with the append-only triggers off: what an attacker
/// holding the owner's credentials could do.
fn tamper(site: &Site, statements: &str) {
    site.sql(&format!(
        "BEGIN; ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change; {statements}; \
         ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change; COMMIT"
    ));
}

#[test]
fn rows_record_the_database_role_and_every_status_change() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (site, _pki, _issuer) = site_with_history();
    let rows = site.sql("SELECT action || '|' || actor || '|' || db_role FROM audit_log ORDER BY chain_seq");
    let role = site.sql("SELECT session_user");
    let actions: Vec<&str> = rows.lines().filter_map(|l| l.split('|').next()).collect();
    for action in ["issuer add", "import", "revoke", "unrevoke"] {
        assert!(actions.contains(&action), "no {action} row in the audit log: {rows}");
    }
    assert!(rows.contains(&format!("|{role}")), "db_role is not the session role {role}: {rows}");
    assert!(rows.contains("alice; the\nauditor ✓"), "the claimed actor is recorded as given: {rows}");
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn no_role_can_change_delete_or_truncate_audit_rows() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (site, _pki, _issuer) = site_with_history();
    for statement in
        ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log WHERE chain_seq = 2", "TRUNCATE audit_log"]
    {
        let output = std::process::Command::new("psql")
            .args(["-X", &site.database_url, "-v", "ON_ERROR_STOP=1", "-tAc", statement])
            .output()
            .expect("psql");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("append-only"), "{statement}: {stderr}");
    }
    // A row inserted with forged chain fields but no hash gets the real ones from the trigger.
    site.sql(
        "INSERT INTO audit_log (actor, action, at, db_role, chain_seq, prev_hash) \
         VALUES ('x', 'forged', '2001-01-01', 'postgres', 1, '\\x00')",
    );
    let forged = site.sql("SELECT db_role = session_user, chain_seq > 1, at > now() - interval '1 hour' FROM audit_log WHERE action = 'forged'");
    assert_eq!(forged, "t|t|t");
    // With a hash, the row is taken as the writer chained it (sql/0007), so checked, and
    // these fields are refused.
    let output = std::process::Command::new("psql")
        .args(["-X", &site.database_url, "-v", "ON_ERROR_STOP=1", "-tAc"])
        .arg(
            "INSERT INTO audit_log (actor, action, at, db_role, chain_seq, prev_hash, row_hash) \
             VALUES ('x', 'forged with a hash', '2001-01-01', 'postgres', 1, '\\x00', '\\x00')",
        )
        .output()
        .expect("psql");
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(site.sql("SELECT count(*) FROM audit_log WHERE action = 'forged with a hash'"), "0");
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn verify_names_the_first_changed_deleted_or_reordered_row() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (site, _pki, _issuer) = site_with_history();
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "an untouched chain verifies: {text}");
    let count: i64 = site.sql("SELECT count(*) FROM audit_log").parse().unwrap();
    assert!(text.contains(&format!("{count} rows")), "{text}");

    // Changed: one field of the third row.
    let (id, actor) = {
        let row = site.sql("SELECT id || '|' || actor FROM audit_log WHERE chain_seq = 3");
        let (id, actor) = row.split_once('|').unwrap();
        (id.to_owned(), actor.to_owned())
    };
    tamper(&site, "UPDATE audit_log SET actor = 'mallory' WHERE chain_seq = 3");
    let (code, text) = verify(&site);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("row id {id} ")) && text.contains("changed"), "{text}");
    tamper(&site, &format!("UPDATE audit_log SET actor = '{}' WHERE chain_seq = 3", actor.replace('\'', "''")));
    assert_eq!(verify(&site).0, 0, "restored");

    // Reordered: two rows swap places (their positions swapped too).
    tamper(&site, SWAP_SECOND_AND_THIRD);
    let (code, text) = verify(&site);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("chain position 2") && text.contains("does not link"), "{text}");
    tamper(&site, SWAP_SECOND_AND_THIRD);
    assert_eq!(verify(&site).0, 0, "restored");

    // Deleted: a row in the middle.
    let id = site.sql("SELECT id FROM audit_log WHERE chain_seq = 3");
    tamper(&site, "DELETE FROM audit_log WHERE chain_seq = 2");
    let (code, text) = verify(&site);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("row id {id} ")) && text.contains("expected 2"), "{text}");
}

#[test]
fn rows_written_before_the_chain_existed_join_it_in_order() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    // A database as the previous release left it: migrations 1-3 and some audit rows.
    let site = Site::with_own_database();
    site.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    for (_, _, sql) in jitocsp::db::migrate::MIGRATIONS.iter().filter(|(version, _, _)| *version < 4) {
        site.sql(sql);
    }
    site.sql(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO schema_migrations (version) VALUES (1), (2), (3); \
         INSERT INTO audit_log (actor, action, before, after) VALUES \
         ('bob', 'import', NULL, '{\"b\": 2, \"a\": [1]}'), ('carol', 'revoke', '{\"status\": \"good\"}', NULL)",
    );
    let migrated = site.jitocsp_ok(&["migrate"], &[]);
    assert!(migrated.contains("applied migrations [4, 5, 6, 7]"), "{migrated}");
    assert_eq!(
        site.sql(
            "SELECT string_agg(chain_seq || ':' || actor || ':' || db_role, ',' ORDER BY chain_seq) FROM audit_log"
        ),
        "1:bob:(before 0004),2:carol:(before 0004)"
    );
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
    // New rows continue the chain.
    let pki = Pki::new();
    site.add_issuer(&pki);
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("3 rows"), "{text}");
}

/// The chain's head is kept for the next row (sql/0006), but nobody can make the chain continue
/// from anywhere else: not by forging the cached head (a setting any session may set), nor by
/// writing the head table. Each attempt is refused and the chain still verifies.
#[test]
fn the_chain_head_cannot_be_forged() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (site, _pki, _issuer) = site_with_history();
    let psql = |statement: &str| {
        let output = std::process::Command::new("psql")
            .args(["-X", &site.database_url, "-v", "ON_ERROR_STOP=1", "-c", statement])
            .output()
            .expect("psql");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let head = site.sql("SELECT chain_seq FROM audit_log_head");
    // A cached head for this very transaction, one row back (its hash is not the head's).
    let forged = format!(
        "BEGIN; SELECT set_config('jitocsp.audit_chain_head', pg_current_xact_id()::text || ':' || ({head} - 1) \
         || ':' || encode(row_hash, 'hex'), true) FROM audit_log WHERE chain_seq = {head} - 1; \
         INSERT INTO audit_log (actor, action) VALUES ('mallory', 'forged'); COMMIT"
    );
    let (ok, stderr) = psql(&forged);
    assert!(!ok && stderr.contains("duplicate key"), "{stderr}");
    // The right position with a wrong hash.
    let forged = format!(
        "BEGIN; SELECT set_config('jitocsp.audit_chain_head', pg_current_xact_id()::text || ':{head}:00', true); \
         INSERT INTO audit_log (actor, action) VALUES ('mallory', 'forged'); COMMIT"
    );
    let (ok, stderr) = psql(&forged);
    assert!(!ok && stderr.contains("do not continue the chain"), "{stderr}");
    for statement in [
        "UPDATE audit_log_head SET row_hash = '\\x00'",
        "DELETE FROM audit_log_head",
        "INSERT INTO audit_log_head VALUES (false, 1, '\\x00')",
        "TRUNCATE audit_log_head",
    ] {
        let (ok, stderr) = psql(statement);
        assert!(!ok && stderr.contains("moved only by the audit chain"), "{statement}: {stderr}");
    }
    assert_eq!(site.sql("SELECT count(*) FROM audit_log WHERE actor = 'mallory'"), "0");
    // Writers still append where the chain is.
    site.sql("INSERT INTO audit_log (actor, action) VALUES ('alice', 'after the attempts')");
    assert_eq!(site.sql("SELECT chain_seq FROM audit_log_head"), (head.parse::<i64>().unwrap() + 1).to_string());
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
}

/// One attempt to append rows a writer chained itself (sql/0007), three revocations between
/// two rows the trigger chains, all in one transaction; `forge` may change what the rows claim before they are
/// chained. Returns the database's refusal, if any.
async fn append_chained(
    client: &mut tokio_postgres::Client,
    forge: impl FnOnce(&mut Chained),
) -> Result<(), tokio_postgres::Error> {
    use jitocsp::audit::{extend_same, SameChange};
    let (before, after) = (r#"{"status": "good"}"#, r#"{"reason": "keyCompromise", "status": "revoked"}"#);
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO audit_log (actor, action) VALUES ('bulk', 'before the bulk rows')", &[]).await?;
    let row = tx.query_one("SELECT now(), session_user::text, chain_seq, row_hash FROM audit_log_head", &[]).await?;
    let mut c = Chained {
        at: row.get(0),
        db_role: row.get(1),
        head_seq: row.get(2),
        head_hash: row.get::<_, Vec<u8>>(3).try_into().unwrap(),
        spoil_hash: false,
    };
    forge(&mut c);
    let change = SameChange {
        at_micros: c.at.timestamp_micros(),
        actor: "bulk",
        db_role: &c.db_role,
        action: "revoke",
        issuer_id: 1,
        before,
        after,
    };
    let serials: [&[u8]; 3] = [&[0x0a, 0x01], &[0x0a, 0x02], &[0x0a, 0x03]];
    let mut links = extend_same(c.head_seq, c.head_hash, &change, &serials);
    if c.spoil_hash {
        links[1].row_hash[0] ^= 1;
    }
    let seqs: Vec<i64> = links.iter().map(|l| l.chain_seq).collect();
    let prev: Vec<&[u8]> = links.iter().map(|l| l.prev_hash.as_slice()).collect();
    let hashes: Vec<&[u8]> = links.iter().map(|l| l.row_hash.as_slice()).collect();
    tx.execute(
        "INSERT INTO audit_log (at, actor, db_role, action, issuer_id, serial, before, after, chain_seq, prev_hash, row_hash) \
         SELECT $1, 'bulk', $2, 'revoke', 1, u.serial, $3::text::jsonb, $4::text::jsonb, u.seq, u.prev, u.hash \
         FROM unnest($5::bytea[], $6::int8[], $7::bytea[], $8::bytea[]) WITH ORDINALITY AS u(serial, seq, prev, hash, n) \
         ORDER BY u.n",
        &[&c.at, &c.db_role, &before, &after, &serials.as_slice(), &seqs, &prev, &hashes],
    )
    .await?;
    tx.execute("INSERT INTO audit_log (actor, action) VALUES ('bulk', 'after the bulk rows')", &[]).await?;
    tx.commit().await
}

/// A change to what a writer's rows claim.
type Forgery = fn(&mut Chained);

/// What a writer's rows claim: their time and role, the head they continue; and whether one
/// hash is then spoilt.
struct Chained {
    at: chrono::DateTime<chrono::Utc>,
    db_role: String,
    head_seq: i64,
    head_hash: [u8; 32],
    spoil_hash: bool,
}

/// A writer may chain its rows itself (sql/0007: a bulk revocation does, to keep the chain
/// locked briefly), but the database checks every row before it keeps any: a wrong hash,
/// another role, a time outside the writing transaction or a link to the wrong row refuses
/// the whole statement. Rows chained right are kept, the trigger's rows before and after
/// them in the same transaction link to them, and the chain verifies. (Before 0007 the trigger overwrote whatever the writer gave.)
#[test]
fn rows_a_writer_chains_itself_are_checked_before_they_are_kept() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (site, _pki, _issuer) = site_with_history();
    let head = site.sql("SELECT chain_seq FROM audit_log_head").parse::<i64>().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = jitocsp::db::connect(&site.database_url, &Default::default()).await.unwrap();
        let forgeries: [(&str, Forgery); 5] = [
            ("a spoilt hash", |c| c.spoil_hash = true),
            ("another role", |c| c.db_role = "postgres".into()),
            ("a back-dated time", |c| c.at -= chrono::TimeDelta::hours(1)),
            ("a time to come", |c| c.at += chrono::TimeDelta::hours(1)),
            ("a link past the head", |c| c.head_seq += 1),
        ];
        for (what, forge) in forgeries {
            let error = append_chained(&mut client, forge).await.expect_err(what);
            let message = error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
            assert!(
                message.contains("do not match their hash") || message.contains("do not continue the chain"),
                "{what}: {error:?}"
            );
        }
        append_chained(&mut client, |_| {}).await.unwrap();
    });
    assert_eq!(site.sql("SELECT count(*) FROM audit_log WHERE actor = 'bulk'"), "5");
    assert_eq!(site.sql("SELECT chain_seq FROM audit_log_head"), (head + 5).to_string());
    let (code, text) = verify(&site);
    assert_eq!(code, 0, "{text}");
}
