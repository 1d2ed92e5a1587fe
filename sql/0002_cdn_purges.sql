-- jitocsp schema, version 2: CDN purges owed by status changes.
--
-- When a CDN purge hook is configured ([cdn] in jitocsp.toml), `admin revoke` and
-- `admin unrevoke` insert one row per changed certificate in the same transaction as the
-- change, so the purge is owed exactly when the change committed and survives the admin
-- process exiting. The admin CLI then calls the hook; rows whose call failed stay here and
-- every running responder with a hook retries them, with exponential backoff, until the
-- hook succeeds. A row is claimed with a lease (`lease_until`), so two responders do not
-- call the hook for it at the same moment; a responder that dies mid-call loses the lease
-- when it runs out.
CREATE TABLE cdn_purges (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id       integer     NOT NULL REFERENCES issuers (id) ON DELETE CASCADE,
    serial          bytea       NOT NULL,
    -- What the hook is given: the Cache-Tag value and the GET URLs, computed at change time.
    tag             text        NOT NULL,
    urls            text[]      NOT NULL,
    -- 'revoke' or 'unrevoke'.
    action          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text
);
CREATE INDEX cdn_purges_next_attempt_at ON cdn_purges (next_attempt_at);
