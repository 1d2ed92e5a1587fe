-- jitocsp schema, version 3: status versions.
--
-- Every status change (revoke, unrevoke, reason change) takes one number from
-- `status_change_seq` in its transaction and stamps it on the rows it changes
-- (`certificates.changed_version`); the notification carries the same number. A response
-- remembers the version of the row it was signed from, so a responder that has heard of
-- change N refuses every response read at a version below N, whichever server (primary or a
-- lagging replica) it was read from and whatever the clocks say. Rows are locked before the
-- number is taken, so versions only grow along the changes of one certificate.
CREATE SEQUENCE status_change_seq AS bigint;

-- NULL: never changed since import (version 0).
ALTER TABLE certificates ADD COLUMN changed_version bigint;

-- Responders catch up after a reconnection by reading the changes above the last version
-- they applied.
CREATE INDEX certificates_changed_version ON certificates (changed_version) WHERE changed_version IS NOT NULL;
