-- jitocsp schema, version 1.
--
-- Postgres is the only source of truth: it holds the status of every certificate. Responses
-- are never stored here; they are signed on demand and cached in Redis.

-- Every issuing CA this responder answers for.
CREATE TABLE issuers (
    id                 integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    cert_der           bytea NOT NULL,
    -- CertID hashes, precomputed so a request is matched without hashing anything.
    name_hash_sha1     bytea NOT NULL,
    key_hash_sha1      bytea NOT NULL,
    name_hash_sha256   bytea NOT NULL,
    key_hash_sha256    bytea NOT NULL,
    -- `file:PATH` or an RFC 7512 `pkcs11:` URI. Never the key itself.
    signer             text NOT NULL,
    -- Delegated responder certificate (id-kp-OCSPSigning), included in every response.
    responder_cert_der bytea,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- The status of every certificate, one row per (issuer, serial). This is the hot table: every
-- cache miss is one point read on its primary key. The columns are fixed-width but for the
-- serial (at most 21 bytes), so a row is about 70 bytes; a few hundred million rows fit.
CREATE TABLE certificates (
    issuer_id   integer     NOT NULL REFERENCES issuers (id),
    -- Minimal DER INTEGER contents of the serial (see src/serial.rs).
    serial      bytea       NOT NULL CHECK (octet_length(serial) BETWEEN 1 AND 21),
    not_after   timestamptz NOT NULL,
    -- RFC 5280 CRLReason code when revoked, NULL when good.
    reason      smallint    CHECK (reason IS NULL OR reason BETWEEN 0 AND 10 AND reason <> 7),
    revoked_at  timestamptz,
    -- When an admin command last changed the status (Postgres clock). Responses whose status
    -- was read before this moment (plus a margin) are never served again.
    changed_at  timestamptz,
    PRIMARY KEY (issuer_id, serial),
    CHECK ((reason IS NULL) = (revoked_at IS NULL))
) WITH (fillfactor = 90);

-- Responders load the changes of the last response-validity window when they (re)connect to
-- the notification channel; only changed rows are indexed.
CREATE INDEX certificates_changed_at ON certificates (changed_at) WHERE changed_at IS NOT NULL;

-- Every admin change: who, what, before, after, when.
CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    action     text NOT NULL,
    issuer_id  integer REFERENCES issuers (id),
    serial     bytea,
    before     jsonb,
    after      jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Cache purges that a revocation owes Redis. Written in the revocation's transaction, deleted
-- once the Redis keys are gone; every running responder retries what is left.
CREATE TABLE pending_purges (
    issuer_id  integer     NOT NULL REFERENCES issuers (id),
    serial     bytea       NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (issuer_id, serial)
);
