//! `admin issuer add`, `list`, `set-signer` and `retire`. Running responders hear of every
//! change within seconds (see [`crate::issuers`]), without a restart.
//!
//! `issuer add` refuses (exit 2), before writing anything:
//! - a `--cert` that is not exactly one certificate, or is not a CA certificate
//!   (basicConstraints cA=TRUE is required: OCSP answers for the certificates a CA issued,
//!   and a leaf passed by mistake would yield CertID hashes no client ever sends);
//! - a certificate already registered under another name, or a name already taken;
//! - a certificate with the CertID identity (subject Name and public key, hence the CertID
//!   name and key hashes) of a registered issuer: a renewed CA certificate with the same
//!   subject and key. OCSP requests cannot tell the two apart, so the certificates such a
//!   copy issues are imported into the existing issuer instead (see [`same_certid_refusal`]).
//!   This is checked in code under a table lock, not by a unique index: databases from
//!   before the check may already hold such pairs, and the index would make `migrate` fail
//!   on them (the responder warns about them at start-up instead);
//! - a signer that cannot be opened, or whose public key is not the key of the certificate
//!   that will sign: the CA's, or with `--responder-cert` the responder's;
//! - a responder certificate not issued by the CA (issuer Name must equal the CA's subject;
//!   the signature is verified too for ECDSA P-256/SHA-256 CAs, other algorithms are checked
//!   by name only and say so), or without the id-kp-OCSPSigning extended key usage.
//!
//! An expired CA or responder certificate is only warned about: an operator may be loading
//! an issuer before it goes live or after it retired.

use chrono::Utc;
use tokio_postgres::error::SqlState;

use super::listing::{say, Listing};
use super::{actor, connect, db, unknown_issuer, AdminError, IssuerAddArgs, IssuerRetireArgs, IssuerSetSignerArgs};
use crate::config::Config;
use crate::db::{audit_log, issuers};
use crate::signer::{self, SignerError};
use crate::x509::{certid_hashes_of, load_pem_or_der, parse_cert, verify_issued_by};

fn one_cert(path: &std::path::Path, role: &str) -> Result<Vec<u8>, AdminError> {
    let mut certs = load_pem_or_der(path)?;
    if certs.len() != 1 {
        return Err(AdminError::input(format!(
            "{role} {}: contains {} certificates; expected exactly one",
            path.display(),
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

fn warn_if_expired(cert: &x509_parser::prelude::X509Certificate<'_>, what: &str) {
    let not_after = cert.validity().not_after.timestamp();
    if not_after < Utc::now().timestamp() {
        eprintln!("warning: {what} expired at {}", cert.validity().not_after);
    }
}

pub async fn add(args: IssuerAddArgs, config: &Config) -> Result<(), AdminError> {
    let name = args.name.trim().to_owned();
    if name.is_empty() {
        return Err(AdminError::input("--name must not be empty"));
    }
    let cert_path = args.cert.display().to_string();
    let ca_der = one_cert(&args.cert, "--cert")?;
    let ca = parse_cert(&ca_der, &cert_path)?;
    if !ca.is_ca() {
        return Err(AdminError::input(format!(
            "--cert {cert_path}: \"{}\" is not a CA certificate (basicConstraints cA is not TRUE)",
            ca.subject()
        )));
    }
    warn_if_expired(&ca, &format!("the CA certificate {cert_path}"));
    let hashes = certid_hashes_of(&ca);

    let responder_der = check_signing(&ca, &cert_path, args.responder_cert.as_deref(), &args.signer, config)?;

    let mut client = connect(config).await?;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    // Serialises `issuer add` so that two of them cannot both pass the identity check below
    // and insert the same CertID. This mode does not conflict with the row locks that
    // imports and revocations take through their foreign keys, nor with readers.
    issuers::lock_for_add(&tx).await.map_err(db("locking issuers"))?;
    if let Some(existing) = issuers::name_by_cert(&tx, &ca_der).await.map_err(db("checking for the certificate"))? {
        return Err(AdminError::input(format!(
            "--cert {cert_path}: this certificate is already registered as issuer {existing:?}"
        )));
    }
    if let Some(existing) =
        issuers::name_by_certid(&tx, &hashes).await.map_err(db("checking for an issuer with the same CertID"))?
    {
        return Err(same_certid_refusal(&cert_path, &existing));
    }
    let inserted = issuers::insert(&tx, &name, &ca_der, &hashes, &args.signer, responder_der.as_deref()).await;
    let id = match inserted {
        Ok(id) => id,
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Err(AdminError::input(format!("an issuer named {name:?} already exists")))
        }
        Err(e) => return Err(db("inserting the issuer")(e)),
    };
    let who = actor();
    let after = serde_json::json!({
        "name": name,
        "subject": ca.subject().to_string(),
        "signer": args.signer,
        "responder_cert": responder_der.is_some(),
        "name_hash_sha1": hex::encode(hashes.name_sha1),
        "key_hash_sha1": hex::encode(hashes.key_sha1),
    });
    audit_log::insert_issuer_event(&tx, &who, "issuer add", id, &after).await.map_err(db("writing the audit log"))?;
    tx.commit().await.map_err(db("committing"))?;
    tracing::info!(target: "jitocsp::audit", actor = %who, action = "issuer add", issuer = %name, issuer_id = id, signer = %args.signer, "issuer added");

    say!("added issuer {name:?} (id {id})");
    say!("  subject:          {}", ca.subject());
    say!("  signer:           {}", args.signer);
    if let Some(path) = &args.responder_cert {
        say!("  responder cert:   {}", path.display());
    }
    say!("  name hash sha1:   {}", hex::encode(hashes.name_sha1));
    say!("  key hash sha1:    {}", hex::encode(hashes.key_sha1));
    say!("  name hash sha256: {}", hex::encode(hashes.name_sha256));
    say!("  key hash sha256:  {}", hex::encode(hashes.key_sha256));
    say!("running responders serve it within seconds");
    Ok(())
}

/// Checks what will sign the issuer's responses, before anything is written: the delegated
/// responder certificate at `responder_cert` (issued by the CA, with id-kp-OCSPSigning), if
/// any, and that `signer` opens and holds the key of the certificate that signs (the
/// responder's, or the CA's). Returns the responder certificate's DER.
fn check_signing(
    ca: &x509_parser::prelude::X509Certificate<'_>,
    cert_path: &str,
    responder_cert: Option<&std::path::Path>,
    signer: &str,
    config: &Config,
) -> Result<Option<Vec<u8>>, AdminError> {
    let responder_der = match responder_cert {
        None => None,
        Some(path) => {
            let shown = path.display().to_string();
            let der = one_cert(path, "--responder-cert")?;
            let responder = parse_cert(&der, &shown)?;
            if responder.issuer().as_raw() != ca.subject().as_raw() {
                return Err(AdminError::input(format!(
                    "--responder-cert {shown}: not issued by the CA: its issuer is \"{}\", \
                     the CA's subject is \"{}\"",
                    responder.issuer(),
                    ca.subject()
                )));
            }
            match verify_issued_by(&responder, ca) {
                Ok(true) => {}
                Ok(false) => eprintln!(
                    "note: --responder-cert {shown}: signature algorithm not verifiable here; \
                     checked the issuer name only"
                ),
                Err(reason) => {
                    return Err(AdminError::input(format!(
                        "--responder-cert {shown}: not signed by the CA {cert_path}: {reason}"
                    )))
                }
            }
            let ocsp_signing = responder.extended_key_usage().ok().flatten().is_some_and(|eku| eku.value.ocsp_signing);
            if !ocsp_signing {
                return Err(AdminError::input(format!(
                    "--responder-cert {shown}: lacks the id-kp-OCSPSigning extended key usage \
                     (RFC 6960 4.2.2.2)"
                )));
            }
            warn_if_expired(&responder, &format!("the responder certificate {shown}"));
            Some(der)
        }
    };

    let (signing_key, signing_what, signing_subject) = match &responder_der {
        Some(der) => {
            let responder = parse_cert(der, "--responder-cert")?;
            (responder.public_key().raw.to_vec(), "--responder-cert", responder.subject().to_string())
        }
        None => (ca.public_key().raw.to_vec(), "the CA certificate", ca.subject().to_string()),
    };
    signer::open(signer, &signing_key, &(&config.signing).into()).map_err(|e| match e {
        SignerError::KeyMismatch { .. } => AdminError::input(format!(
            "--signer {}: its public key is not the key of {signing_what} ({}); \
             responses signed with it would not verify",
            signer, signing_subject
        )),
        SignerError::Open { .. } if signer.starts_with("pkcs11:") => AdminError::Operational(format!("--signer: {e}")),
        other => AdminError::input(format!("--signer: {other}")),
    })?;
    Ok(responder_der)
}

/// The refusal of a CA certificate whose subject and key are those of an issuer already
/// registered, typically the same CA renewed. A request names its issuer only by the hashes
/// of that subject and key (RFC 6960 4.1.1), so a second issuer with them would never be
/// matched: its certificates would all be answered unauthorized.
fn same_certid_refusal(cert_path: &str, existing: &str) -> AdminError {
    AdminError::input(format!(
        "--cert {cert_path}: its subject and public key are those of issuer {existing:?}, already \
         registered (a renewed certificate of the same CA, or a copy). OCSP identifies an issuer \
         only by the hashes of its subject name and key, so to OCSP this is the same issuer and \
         cannot be a second one. Nothing was added. Import the certificates it issues into the \
         existing issuer: `jitocsp admin import --issuer {existing:?} ...`; they are answered \
         under {existing:?}, with responses that verify against either CA certificate."
    ))
}

/// `issuer set-signer`: checks the new signer (and responder certificate) as `issuer add`
/// does, then replaces them in one transaction with its audit row. The trigger of sql/0005
/// tells running responders, which reopen the issuer; until then they sign with the old one.
pub async fn set_signer(args: IssuerSetSignerArgs, config: &Config) -> Result<(), AdminError> {
    let mut client = connect(config).await?;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let Some((issuer, old_signer, old_responder, retired)) =
        issuers::signing_for_update(&tx, &args.name).await.map_err(db("looking up the issuer"))?
    else {
        return Err(unknown_issuer(&args.name));
    };
    if retired {
        return Err(AdminError::input(format!("issuer {:?} is retired; it is no longer served", args.name)));
    }
    let ca = parse_cert(&issuer.cert_der, "the stored CA certificate")?;
    let responder_der =
        check_signing(&ca, "the stored CA certificate", args.responder_cert.as_deref(), &args.signer, config)?;
    issuers::set_signer(&tx, issuer.id, &args.signer, responder_der.as_deref())
        .await
        .map_err(db("updating the issuer"))?;
    let fingerprint =
        |der: &Option<Vec<u8>>| der.as_deref().map(|d| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(d)));
    let before = serde_json::json!({ "signer": old_signer, "responder_cert_sha256": fingerprint(&old_responder) });
    let after = serde_json::json!({ "signer": args.signer, "responder_cert_sha256": fingerprint(&responder_der) });
    let who = actor();
    audit_log::insert_issuer_change(&tx, &who, "issuer set-signer", issuer.id, Some(&before), &after)
        .await
        .map_err(db("writing the audit log"))?;
    tx.commit().await.map_err(db("committing"))?;
    tracing::info!(target: "jitocsp::audit", actor = %who, action = "issuer set-signer", issuer = %issuer.name, signer = %args.signer, "issuer signer replaced");
    say!("issuer {:?}: signer {} -> {}", issuer.name, old_signer, args.signer);
    match &args.responder_cert {
        Some(path) => say!("  responder cert:   {}", path.display()),
        None => say!("  responder cert:   none (the CA signs)"),
    }
    say!("running responders switch within seconds");
    Ok(())
}

/// `issuer retire`: stops every running responder from serving the issuer.
pub async fn retire(args: IssuerRetireArgs, config: &Config) -> Result<(), AdminError> {
    let mut client = connect(config).await?;
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    let Some((issuer, signer, _, _)) =
        issuers::signing_for_update(&tx, &args.name).await.map_err(db("looking up the issuer"))?
    else {
        return Err(unknown_issuer(&args.name));
    };
    if !issuers::retire(&tx, issuer.id).await.map_err(db("retiring the issuer"))? {
        say!("issuer {:?} was retired already", issuer.name);
        return Ok(());
    }
    let who = actor();
    let before = serde_json::json!({ "served": true, "signer": signer });
    let after = serde_json::json!({ "served": false });
    audit_log::insert_issuer_change(&tx, &who, "issuer retire", issuer.id, Some(&before), &after)
        .await
        .map_err(db("writing the audit log"))?;
    tx.commit().await.map_err(db("committing"))?;
    tracing::info!(target: "jitocsp::audit", actor = %who, action = "issuer retire", issuer = %issuer.name, "issuer retired");
    say!("retired issuer {:?}: running responders answer its certificates unauthorized within seconds", issuer.name);
    Ok(())
}

pub async fn list(config: &Config) -> Result<(), AdminError> {
    let client = connect(config).await?;
    let listed = issuers::list(&client).await.map_err(db("listing issuers"))?;
    if listed.is_empty() {
        say!("no issuers (add one with `jitocsp admin issuer add`)");
        return Ok(());
    }
    let mut out = Listing::new();
    for issuer in listed {
        let issuers::Listed { id, name, signer, cert_der: der, delegated, created_at: created, retired_at } = issuer;
        let (subject, not_after) = match parse_cert(&der, "stored certificate") {
            Ok(c) => (c.subject().to_string(), c.validity().not_after.to_string()),
            Err(e) => (format!("<{e}>"), String::new()),
        };
        out.line(format_args!(
            "{id}\t{name}\tsubject=\"{subject}\"\tnot_after={not_after}\tsigner={signer}\tresponder_cert={}\tadded={}{}",
            if delegated { "yes" } else { "no" },
            created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            retired_at.map_or(String::new(), |at| format!(
                "\tretired={}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
        ));
    }
    out.finish().map_err(AdminError::Output)
}
