-- The audit log as a tamper-evident hash chain (CA/B Forum BR 5.4; WebTrust / ETSI audits ask
-- who changed which status, and whether the record can be altered).
--
-- * Every row records the authenticated database role (`session_user`, which SET ROLE does
--   not change) beside the actor the CLI claims, and the database's own clock.
-- * Every row carries `row_hash = sha256(prev_hash || content)`, where `prev_hash` is the
--   previous row's `row_hash` (32 zero bytes for the first) and `content` is the row's
--   fields, each length-prefixed so that no two different rows have the same content
--   (audit_log_content below; `jitocsp admin audit --verify` recomputes it independently,
--   in Rust, from the raw columns). `chain_seq` numbers the rows in chain order: 1, 2, 3...
--   A changed row breaks its own hash, a deleted one leaves a gap in chain_seq and a broken
--   link, a reordered one breaks the links.
-- * The chain is written by a trigger, so every writer (any role, any client) is chained the
--   same way; appends are serialised by a transaction-level advisory lock, so that two
--   concurrent writers cannot both link to the same previous row.
-- * UPDATE, DELETE and TRUNCATE are refused by triggers, on top of the grants in
--   deploy/postgres/roles.sql. Only the table owner can disable them, and jitocsp never runs
--   as the owner; an owner who does can still not rewrite history unnoticed, short of
--   recomputing every later hash, which an auditor holding an earlier head hash detects.

ALTER TABLE audit_log
    ADD COLUMN db_role   text,
    ADD COLUMN chain_seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN row_hash  bytea;

-- One field of the content: its length in bytes, ':', the field, ';'; NULL is '-;'.
CREATE FUNCTION audit_log_field(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value IS NULL THEN '-;' ELSE octet_length(value) || ':' || value || ';' END;

-- What a row's hash covers. Timestamps as microseconds since the epoch (independent of the
-- session's DateStyle and TimeZone), the serial as lowercase hex, JSON in jsonb's canonical
-- text form.
CREATE FUNCTION audit_log_content(
    chain_seq bigint, at timestamptz, actor text, db_role text, action text,
    issuer_id integer, serial bytea, before jsonb, after jsonb
) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN convert_to(
        'jitocsp-audit-v1;'
        || audit_log_field(chain_seq::text)
        || audit_log_field(((extract(epoch FROM at) * 1000000)::bigint)::text)
        || audit_log_field(actor)
        || audit_log_field(db_role)
        || audit_log_field(action)
        || audit_log_field(issuer_id::text)
        || audit_log_field(encode(serial, 'hex'))
        || audit_log_field(before::text)
        || audit_log_field(after::text),
        'UTF8');

CREATE FUNCTION audit_log_chain() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
BEGIN
    -- 'jitaudit' in ASCII: held until this transaction ends, so the next writer links to
    -- this transaction's last row.
    PERFORM pg_advisory_xact_lock(7667787802505144692);
    SELECT a.chain_seq, a.row_hash INTO last_seq, last_hash
        FROM audit_log a WHERE a.chain_seq IS NOT NULL ORDER BY a.chain_seq DESC LIMIT 1;
    NEW.at        := clock_timestamp();
    NEW.db_role   := session_user;
    NEW.chain_seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.row_hash  := sha256(NEW.prev_hash || audit_log_content(NEW.chain_seq, NEW.at, NEW.actor,
        NEW.db_role, NEW.action, NEW.issuer_id, NEW.serial, NEW.before, NEW.after));
    RETURN NEW;
END
$$;

-- Rows written before this migration join the chain in the order they were written; their
-- db_role is unknown ('(before 0004)'), which the chain then records.
DO $$
DECLARE
    r         record;
    seq       bigint := 0;
    prev      bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    this_hash bytea;
BEGIN
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        seq := seq + 1;
        this_hash := sha256(prev || audit_log_content(seq, r.at, r.actor, '(before 0004)', r.action,
            r.issuer_id, r.serial, r.before, r.after));
        UPDATE audit_log SET db_role = '(before 0004)', chain_seq = seq, prev_hash = prev, row_hash = this_hash
            WHERE id = r.id;
        prev := this_hash;
    END LOOP;
END
$$;

ALTER TABLE audit_log
    ALTER COLUMN db_role SET NOT NULL,
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN row_hash SET NOT NULL;
CREATE UNIQUE INDEX audit_log_chain_seq ON audit_log (chain_seq);

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

CREATE FUNCTION audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
