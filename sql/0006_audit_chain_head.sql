-- The audit hash chain of 0004, written in constant time per row.
--
-- 0004's trigger cost about 250 us per row, so a mass revocation (millions of audit rows)
-- spent most of its time there: for every row it called the SQL functions audit_log_field
-- and audit_log_content, which Postgres cannot inline (the argument is used three times) and
-- so runs as separate SQL function calls, and it looked up the last row of audit_log, whose
-- plan degrades to a scan of the whole table when the statistics say the table is small
-- (a fresh audit_log that one bulk revocation fills). The chain itself does not change: the
-- same content, the same hash, the same chain_seq, so `jitocsp admin audit --verify` checks
-- old and new rows alike.
--
-- * The content is built inline in PL/pgSQL, byte for byte as audit_log_content builds it
--   (that function stays, and the tests compare the two).
-- * The head of the chain (last chain_seq and row_hash) is kept in the one-row table
--   audit_log_head. The first row a transaction appends takes the advisory lock (as in 0004)
--   and reads the head there; each row then leaves the new head in a transaction-local
--   setting (jitocsp.audit_chain_head, tagged with the transaction id) for the next row, so
--   the lock and the read happen once per transaction, not once per row. A savepoint rolled
--   back takes its rows, its setting and its lock with it.
-- * A setting can be set by anyone, so it is only a cache: after every INSERT statement,
--   audit_log_chain_close (SECURITY DEFINER) checks that the statement's new rows continue
--   the stored head link by link, and refuses the statement if not; then it moves the head.
--   A forged setting can only get its own statement refused, never a row into the chain
--   that does not link to the one before it.
-- * audit_log_head can be changed only by that check: a trigger refuses any other write to
--   it, on top of the grants (deploy/postgres/roles.sql revokes writes on it from the
--   admin role).

-- No writer may append while the head is read and the triggers are swapped.
LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE audit_log_head (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    chain_seq bigint NOT NULL,
    row_hash  bytea NOT NULL
);
INSERT INTO audit_log_head (chain_seq, row_hash)
SELECT coalesce((SELECT a.chain_seq FROM audit_log a ORDER BY a.chain_seq DESC LIMIT 1), 0),
       coalesce((SELECT a.row_hash FROM audit_log a ORDER BY a.chain_seq DESC LIMIT 1),
                '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);

CREATE OR REPLACE FUNCTION audit_log_chain() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    xact      text := pg_current_xact_id()::text;
    cached    text := current_setting('jitocsp.audit_chain_head', true);
    head_seq  bigint;
    head_hash bytea;
    f_seq     text;
    f_at      text;
    f_issuer  text;
    f_serial  text;
    f_before  text;
    f_after   text;
BEGIN
    IF starts_with(cached, xact || ':') THEN
        head_seq  := split_part(cached, ':', 2)::bigint;
        head_hash := decode(split_part(cached, ':', 3), 'hex');
    ELSE
        -- 'jitaudit' in ASCII, as in 0004: held until this transaction ends.
        PERFORM pg_advisory_xact_lock(7667787802505144692);
        SELECT h.chain_seq, h.row_hash INTO head_seq, head_hash FROM audit_log_head h;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'audit_log_head is empty: the audit chain has no head';
        END IF;
    END IF;
    NEW.at        := clock_timestamp();
    NEW.db_role   := session_user;
    NEW.chain_seq := head_seq + 1;
    NEW.prev_hash := head_hash;
    -- audit_log_content, inline: each field as <octets>:<text>; and NULL as -;
    f_seq    := NEW.chain_seq::text;
    f_at     := ((extract(epoch FROM NEW.at) * 1000000)::bigint)::text;
    f_issuer := NEW.issuer_id::text;
    f_serial := encode(NEW.serial, 'hex');
    f_before := NEW.before::text;
    f_after  := NEW.after::text;
    NEW.row_hash := sha256(NEW.prev_hash || convert_to('jitocsp-audit-v1;'
        || octet_length(f_seq) || ':' || f_seq || ';'
        || octet_length(f_at) || ':' || f_at || ';'
        || octet_length(NEW.actor) || ':' || NEW.actor || ';'
        || octet_length(NEW.db_role) || ':' || NEW.db_role || ';'
        || octet_length(NEW.action) || ':' || NEW.action || ';'
        || CASE WHEN f_issuer IS NULL THEN '-;' ELSE octet_length(f_issuer) || ':' || f_issuer || ';' END
        || CASE WHEN f_serial IS NULL THEN '-;' ELSE octet_length(f_serial) || ':' || f_serial || ';' END
        || CASE WHEN f_before IS NULL THEN '-;' ELSE octet_length(f_before) || ':' || f_before || ';' END
        || CASE WHEN f_after IS NULL THEN '-;' ELSE octet_length(f_after) || ':' || f_after || ';' END,
        'UTF8'));
    PERFORM set_config('jitocsp.audit_chain_head', xact || ':' || f_seq || ':' || encode(NEW.row_hash, 'hex'), true);
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_log_chain_close() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    n         bigint;
    first_seq bigint;
    last_seq  bigint;
    unlinked  bigint;
BEGIN
    SELECT count(*), min(r.chain_seq), max(r.chain_seq) INTO n, first_seq, last_seq FROM new_rows r;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT h.chain_seq, h.row_hash INTO head_seq, head_hash FROM audit_log_head h FOR UPDATE;
    SELECT count(*) INTO unlinked
        FROM new_rows r LEFT JOIN new_rows p ON p.chain_seq = r.chain_seq - 1
        WHERE r.prev_hash IS DISTINCT FROM CASE WHEN r.chain_seq = first_seq THEN head_hash ELSE p.row_hash END;
    IF head_seq IS NULL OR first_seq <> head_seq + 1 OR last_seq - first_seq + 1 <> n OR unlinked > 0 THEN
        RAISE EXCEPTION 'audit_log: the new rows do not continue the chain (its head is at position %)', head_seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    UPDATE audit_log_head
        SET chain_seq = last_seq, row_hash = (SELECT r.row_hash FROM new_rows r WHERE r.chain_seq = last_seq);
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_log_chain_close AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit_log_chain_close();

-- Only audit_log_chain_close (a trigger, so at trigger depth 2 here) moves the head.
CREATE FUNCTION audit_log_head_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() >= 2 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log_head is moved only by the audit chain: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_head_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_log_head
    FOR EACH ROW EXECUTE FUNCTION audit_log_head_guard();
CREATE TRIGGER audit_log_head_no_truncate BEFORE TRUNCATE ON audit_log_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_head_guard();
