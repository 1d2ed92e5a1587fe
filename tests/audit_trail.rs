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
    // A row inserted with forged chain fields gets the real ones.
    site.sql(
        "INSERT INTO audit_log (actor, action, at, db_role, chain_seq, prev_hash, row_hash) \
         VALUES ('x', 'forged', '2001-01-01', 'postgres', 1, '\\x00', '\\x00')",
    );
    let forged = site.sql("SELECT db_role = session_user, chain_seq > 1, at > now() - interval '1 hour' FROM audit_log WHERE action = 'forged'");
    assert_eq!(forged, "t|t|t");
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
    assert!(migrated.contains("applied migrations [4, 5, 6]"), "{migrated}");
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
