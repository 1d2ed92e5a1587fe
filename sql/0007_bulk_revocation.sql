-- Mass revocation at a constant, small cost per certificate (issue 12: 3 million in under
-- two minutes). The audit chain, the owed Redis purges and the status rows stay what they
-- were; what changes is who does the per-row work and how many rows carry it.
--
-- 1. The audit chain, computed by the writer and checked by the database in one pass.
--
--    0006's per-row trigger costs about 13 us a row (a PL/pgSQL call, a setting parsed and
--    set, a hash), all of it while the chain is locked, so the audit rows of a bulk
--    revocation were its longest serialized step. Computing a chain is sequential, but
--    checking one is not: each row's hash depends only on its own columns and prev_hash,
--    and each link only on the row before. So a writer may now insert rows with the chain
--    columns filled in (at, db_role, chain_seq, prev_hash, row_hash); the per-row trigger
--    runs only for rows without a row_hash, exactly as before, and the statement trigger
--    checks every new row, whoever filled it in:
--    * the links and positions, from the stored head on (as in 0006);
--    * each row_hash against sha256(prev_hash || content), the content built as
--      audit_log_content (0004) builds it;
--    * db_role = session_user, and `at` within this transaction by the database's clock
--      (between transaction_timestamp() and clock_timestamp()): a writer cannot claim
--      another role, back-date or post-date a row. The per-row trigger's rows meet these
--      by construction. (A clock stepped backwards during the transaction makes the
--      statement fail; nothing of it is written.)
--    A row that fails any check refuses the whole statement, so the table only ever holds
--    a chain that `jitocsp admin audit --verify` accepts. The chain format is unchanged:
--    old and new rows are verified alike.
--    These checks are a second statement trigger, audit_log_chain_verify, after 0006's
--    audit_log_chain_close (which checks the links and moves the head, unchanged). It also
--    leaves the new head in the transaction's cached setting (0006), so that a row appended
--    by the per-row trigger later in the same transaction continues from it.

LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE;

DROP TRIGGER audit_log_chain ON audit_log;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.row_hash IS NULL) EXECUTE FUNCTION audit_log_chain();

-- After 0006's audit_log_chain_close (statement triggers fire in name order), which checked
-- the links and moved the head: the rest of every new row.
CREATE FUNCTION audit_log_chain_verify() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    wrong     bigint;
    head_seq  bigint;
    head_hash bytea;
BEGIN
    -- audit_log_content, inline (as in 0006's audit_log_chain), for every row at once.
    SELECT count(*) INTO wrong
        FROM new_rows r,
             LATERAL (SELECT r.chain_seq::text AS seq,
                             ((extract(epoch FROM r.at) * 1000000)::bigint)::text AS at,
                             r.issuer_id::text AS issuer,
                             encode(r.serial, 'hex') AS serial,
                             r.before::text AS before,
                             r.after::text AS after
                      OFFSET 0) f
        WHERE r.db_role IS DISTINCT FROM session_user
           OR r.at IS NULL OR r.at < transaction_timestamp() OR r.at > clock_timestamp()
           OR r.row_hash IS DISTINCT FROM sha256(r.prev_hash || convert_to('jitocsp-audit-v1;'
                  || octet_length(f.seq) || ':' || f.seq || ';'
                  || octet_length(f.at) || ':' || f.at || ';'
                  || octet_length(r.actor) || ':' || r.actor || ';'
                  || octet_length(r.db_role) || ':' || r.db_role || ';'
                  || octet_length(r.action) || ':' || r.action || ';'
                  || CASE WHEN f.issuer IS NULL THEN '-;' ELSE octet_length(f.issuer) || ':' || f.issuer || ';' END
                  || CASE WHEN f.serial IS NULL THEN '-;' ELSE octet_length(f.serial) || ':' || f.serial || ';' END
                  || CASE WHEN f.before IS NULL THEN '-;' ELSE octet_length(f.before) || ':' || f.before || ';' END
                  || CASE WHEN f.after IS NULL THEN '-;' ELSE octet_length(f.after) || ':' || f.after || ';' END,
                  'UTF8'));
    IF wrong > 0 THEN
        RAISE EXCEPTION 'audit_log: % new row(s) do not match their hash, the session''s role or this transaction''s time',
            wrong USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- The head as audit_log_chain_close left it, for the per-row trigger's next row.
    SELECT h.chain_seq, h.row_hash INTO head_seq, head_hash FROM audit_log_head h;
    PERFORM set_config('jitocsp.audit_chain_head',
        pg_current_xact_id()::text || ':' || head_seq::text || ':' || encode(head_hash, 'hex'), true);
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_log_chain_verify AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit_log_chain_verify();

-- 2. The Redis purges a change owes, one row per transaction instead of one per certificate.
--
--    A row of pending_purges per certificate cost a bulk revocation about 11 us per
--    certificate (the row, its primary key, its foreign-key check, and its removal after
--    the purge) and as many rows of WAL. A status change now records the purges it owes as
--    ONE row holding its serials, in the same transaction (so a purge owed is never lost,
--    whatever happens after the commit), and the row goes once every serial's keys are
--    deleted. Rows are never re-armed: a later change owes its own row, so settling one row
--    cannot drop the purge another change owes (pending_purges needed its `since` rule for
--    that). pending_purges stays, written no more by this version but still worked off
--    (rows written before this migration, or by an older admin CLI during an upgrade).
CREATE TABLE pending_purge_batches (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id  integer     NOT NULL REFERENCES issuers (id),
    -- Minimal DER INTEGER contents, as certificates.serial.
    serials    bytea[]     NOT NULL CHECK (cardinality(serials) > 0),
    -- The owing transaction's now().
    since      timestamptz NOT NULL DEFAULT now(),
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text
);
-- The serials are random octets, which do not compress: stored out of line without trying.
ALTER TABLE pending_purge_batches ALTER COLUMN serials SET STORAGE EXTERNAL;

-- 3. Fewer index entries per change.
--
--    Every status change writes a new version of its certificates row, and as the table's
--    pages are full (a bulk revocation changes every row of a page at once), the new version
--    goes to another page and every index of certificates gets an entry. Nothing reads
--    certificates_changed_version (the responders catch up by changed_at, see
--    certificates_changed_at; a row's version is read with the row), so it goes: about 70
--    bytes of WAL per change, and its index maintenance.
DROP INDEX certificates_changed_version;

--    audit_log grows in `at` order, and is searched by time only by an operator: a BRIN
--    index (a summary per 128 pages) serves that for a fraction of a btree's upkeep, which
--    was an index entry per audit row.
DROP INDEX audit_log_at;
CREATE INDEX audit_log_at ON audit_log USING brin (at);
