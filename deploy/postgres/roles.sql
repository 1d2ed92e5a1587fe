-- jitocsp database roles: least privilege for the responders, read/write for the admin CLI.
--
-- Run it after `jitocsp migrate`, connected to the jitocsp database as the role that owns
-- the tables (the one that ran the migrations; it needs CREATEROLE, or be a superuser), and
-- again after every new migration; it is idempotent:
--   psql -v ON_ERROR_STOP=1 -d jitocsp -f deploy/postgres/roles.sql
--
-- Both roles can log in but get no password here (this file is not a place for secrets).
-- Set them interactively, so they appear in neither the shell history nor the server log:
--   psql -d jitocsp -c '\password jitocsp_responder'
--   psql -d jitocsp -c '\password jitocsp_admin'
-- Then: responders use DATABASE_URL=postgres://jitocsp_responder:PASSWORD@host/jitocsp
-- (or database.password_file), the admin CLI postgres://jitocsp_admin:...@host/jitocsp.

\set ON_ERROR_STOP on

BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jitocsp_responder') THEN
        CREATE ROLE jitocsp_responder LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jitocsp_admin') THEN
        CREATE ROLE jitocsp_admin LOGIN;
    END IF;
END
$$;

-- Neither role may create databases or roles. (CREATE ROLE makes them NOSUPERUSER,
-- NOREPLICATION and NOBYPASSRLS; only a superuser may change those, so they are checked
-- below rather than set here, which lets a CREATEROLE owner run this file.)
ALTER ROLE jitocsp_responder LOGIN NOCREATEDB NOCREATEROLE INHERIT;
ALTER ROLE jitocsp_admin     LOGIN NOCREATEDB NOCREATEROLE INHERIT;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname IN ('jitocsp_responder', 'jitocsp_admin')
               AND (rolsuper OR rolreplication OR rolbypassrls)) THEN
        RAISE EXCEPTION 'jitocsp_responder or jitocsp_admin is SUPERUSER, REPLICATION or BYPASSRLS; '
            'as a superuser run: ALTER ROLE ... NOSUPERUSER NOREPLICATION NOBYPASSRLS';
    END IF;
END
$$;

-- A responder's queries are point reads and small updates; one that runs long is stuck
-- (and holds a pool connection a request is waiting for). The admin CLI may run long
-- imports, so it keeps the server default.
ALTER ROLE jitocsp_responder SET statement_timeout = '5s';
ALTER ROLE jitocsp_responder SET idle_in_transaction_session_timeout = '10s';

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO jitocsp_responder, jitocsp_admin', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO jitocsp_responder, jitocsp_admin;

-- Start from nothing, so re-running this file also takes back anything granted by hand.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM jitocsp_responder, jitocsp_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM jitocsp_responder, jitocsp_admin;

-- Responder: reads status and issuers; works off the purge queues (Redis purges in
-- pending_purge_batches and the older pending_purges, CDN purges in cdn_purges: retries,
-- then deletes what is done). It never changes a status, never adds an issuer and never
-- writes the audit log.
GRANT SELECT ON issuers, certificates, audit_log TO jitocsp_responder;
GRANT SELECT, UPDATE, DELETE ON pending_purge_batches, pending_purges, cdn_purges TO jitocsp_responder;

-- Admin CLI (issuer add, import, revoke, unrevoke, purge, status): read/write everything.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO jitocsp_admin;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO jitocsp_admin;
-- ...except that the audit log is append-only: what was done cannot be undone or hidden
-- with the same credentials. (Triggers refuse UPDATE, DELETE and TRUNCATE for every role
-- too, and the rows are hash-chained: `jitocsp admin audit --verify`; sql/0004.)
REVOKE UPDATE, DELETE ON audit_log FROM jitocsp_admin;
-- The chain's head (sql/0006) is moved only by the chain's own trigger, which runs as the
-- table owner; the admin may read it.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_log_head FROM jitocsp_admin;

-- Tables that later migrations create (as the role running this file) are readable and
-- writable by the admin at once; the responder gets grants only from this file.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO jitocsp_admin;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO jitocsp_admin;

COMMIT;
