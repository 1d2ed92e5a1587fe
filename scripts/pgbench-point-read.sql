-- One status read as a cache miss makes it (primary key of `certificates`), for pgbench:
--   deploy/SCALING.md. pgbench_point_keys(n, issuer_id, serial) numbers existing rows 1..:rows
--   (CREATE TABLE pgbench_point_keys AS SELECT row_number() OVER () AS n, issuer_id, serial
--    FROM certificates; ALTER TABLE pgbench_point_keys ADD PRIMARY KEY (n);),
--   so each transaction is two primary-key lookups (the key, then the certificate).
\set n random(1, :rows)
SELECT c.not_after, c.reason, c.revoked_at, c.changed_version
  FROM pgbench_point_keys k JOIN certificates c ON c.issuer_id = k.issuer_id AND c.serial = k.serial
 WHERE k.n = :n;
