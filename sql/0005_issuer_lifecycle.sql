-- Issuers change while responders run (`jitocsp admin issuer add | retire | set-signer`).
--
-- * `retired_at`: a retired issuer is no longer served (its certificates are answered
--   unauthorized); its rows stay, for the audit trail and so that its certificate cannot be
--   registered again under another name by mistake.
-- * `changed_at`: when the row last changed. Responders keep an issuer they have already
--   opened while its `changed_at` is the same, and reopen its signer when it moved.
-- * Every insert or update of a row notifies `jitocsp_issuers` (payload: the issuer id), on
--   commit, whoever wrote it. Responders reload the issuers when they hear it, and whenever
--   their listening connection is (re)established, since notifications sent while it was
--   down are lost.

ALTER TABLE issuers
    ADD COLUMN retired_at timestamptz,
    ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION issuers_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jitocsp_issuers', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER issuers_notify AFTER INSERT OR UPDATE ON issuers
    FOR EACH ROW EXECUTE FUNCTION issuers_notify();
