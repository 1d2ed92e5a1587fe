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

/// An issuer as `admin issuer list` shows it.
pub struct Listed {
    pub id: i32,
    pub name: String,
    pub signer: String,
    pub cert_der: Vec<u8>,
    pub delegated: bool,
    pub created_at: DateTime<Utc>,
}

/// Every issuer, by id.
pub async fn list(client: &Client) -> Result<Vec<Listed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, name, signer, cert_der, responder_cert_der IS NOT NULL, created_at \
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
        })
        .collect())
}
