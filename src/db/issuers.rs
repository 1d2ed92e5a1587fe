//! `issuers`: the registered CAs, their CertID hashes and signers (as `admin` reads and
//! writes them; the responders load theirs in [`crate::issuers`]).

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::x509::CertIdHashes;

/// An issuer, as the status changes need it.
#[derive(Clone, Debug)]
pub struct IssuerRow {
    pub id: i32,
    pub name: String,
    pub cert_der: Vec<u8>,
}

/// The issuer named `name`, if registered.
pub async fn by_name(client: &impl GenericClient, name: &str) -> Result<Option<IssuerRow>, tokio_postgres::Error> {
    let row = client.query_opt("SELECT id, name, cert_der FROM issuers WHERE name = $1", &[&name]).await?;
    Ok(row.map(|r| IssuerRow { id: r.get(0), name: r.get(1), cert_der: r.get(2) }))
}

/// Serialises `issuer add`s: this mode conflicts with itself, not with the row locks that
/// imports and revocations take through their foreign keys, nor with readers.
pub async fn lock_for_add(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("LOCK TABLE issuers IN SHARE ROW EXCLUSIVE MODE").await
}

/// The name of the issuer registered with exactly this certificate, if any.
pub async fn name_by_cert(tx: &Transaction<'_>, cert_der: &[u8]) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(tx.query_opt("SELECT name FROM issuers WHERE cert_der = $1", &[&cert_der]).await?.map(|r| r.get(0)))
}

/// The name of the oldest issuer with either of these CertID identities, if any.
pub async fn name_by_certid(
    tx: &Transaction<'_>,
    hashes: &CertIdHashes,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT name FROM issuers \
             WHERE (name_hash_sha1 = $1 AND key_hash_sha1 = $2) \
                OR (name_hash_sha256 = $3 AND key_hash_sha256 = $4) \
             ORDER BY id LIMIT 1",
            &[&&hashes.name_sha1[..], &&hashes.key_sha1[..], &&hashes.name_sha256[..], &&hashes.key_sha256[..]],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Registers an issuer; returns its id. A taken name fails with a unique violation.
pub async fn insert(
    tx: &Transaction<'_>,
    name: &str,
    cert_der: &[u8],
    hashes: &CertIdHashes,
    signer: &str,
    responder_cert_der: Option<&[u8]>,
) -> Result<i32, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "INSERT INTO issuers (name, cert_der, name_hash_sha1, key_hash_sha1, \
                                  name_hash_sha256, key_hash_sha256, signer, responder_cert_der) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &name,
                &cert_der,
                &&hashes.name_sha1[..],
                &&hashes.key_sha1[..],
                &&hashes.name_sha256[..],
                &&hashes.key_sha256[..],
                &signer,
                &responder_cert_der,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The signing setup of the issuer named `name`, locked until the transaction ends: (id,
/// CA certificate, signer, delegated responder certificate, retired). `FOR NO KEY UPDATE`,
/// the lock the later `UPDATE` of these columns takes anyway: it serialises signer changes
/// and retirements of the issuer, and leaves the `FOR KEY SHARE` locks of its certificates'
/// and audit rows' foreign keys alone, so imports and revocations go on while a slow signer
/// (a network HSM's login) is opened and checked.
pub async fn signing_for_update(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<(IssuerRow, String, Option<Vec<u8>>, bool)>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT id, name, cert_der, signer, responder_cert_der, retired_at IS NOT NULL \
             FROM issuers WHERE name = $1 FOR NO KEY UPDATE",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| (IssuerRow { id: r.get(0), name: r.get(1), cert_der: r.get(2) }, r.get(3), r.get(4), r.get(5))))
}

/// Replaces an issuer's signer and delegated responder certificate (None: the CA signs).
pub async fn set_signer(
    tx: &Transaction<'_>,
    id: i32,
    signer: &str,
    responder_cert_der: Option<&[u8]>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE issuers SET signer = $2, responder_cert_der = $3, changed_at = now() WHERE id = $1",
        &[&id, &signer, &responder_cert_der],
    )
    .await
    .map(drop)
}

/// Retires an issuer: responders stop serving it. Returns false if it was retired already.
pub async fn retire(tx: &Transaction<'_>, id: i32) -> Result<bool, tokio_postgres::Error> {
    let changed = tx
        .execute(
            "UPDATE issuers SET retired_at = now(), changed_at = now() WHERE id = $1 AND retired_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(changed == 1)
}

/// An issuer a responder serves, as stored.
pub struct Served {
    pub id: i32,
    pub name: String,
    pub cert_der: Vec<u8>,
    pub responder_cert_der: Option<Vec<u8>>,
    pub signer: String,
    /// When the row last changed: an issuer opened from an older row is reopened.
    pub changed_at: DateTime<Utc>,
}

/// Every issuer that is not retired, by id: what the responders serve.
pub async fn served(client: &impl GenericClient) -> Result<Vec<Served>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, name, cert_der, responder_cert_der, signer, changed_at \
             FROM issuers WHERE retired_at IS NULL ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Served {
            id: r.get(0),
            name: r.get(1),
            cert_der: r.get(2),
            responder_cert_der: r.get(3),
            signer: r.get(4),
            changed_at: r.get(5),
        })
        .collect())
}

/// An issuer as `admin issuer list` shows it.
pub struct Listed {
    pub id: i32,
    pub name: String,
    pub signer: String,
    pub cert_der: Vec<u8>,
    pub delegated: bool,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// Every issuer, retired ones included, by id.
pub async fn list(client: &Client) -> Result<Vec<Listed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, name, signer, cert_der, responder_cert_der IS NOT NULL, created_at, retired_at \
             FROM issuers ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            name: r.get(1),
            signer: r.get(2),
            cert_der: r.get(3),
            delegated: r.get(4),
            created_at: r.get(5),
            retired_at: r.get(6),
        })
        .collect())
}
