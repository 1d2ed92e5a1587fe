//! Requests that cannot share a cached response: several CertIDs (one response has one
//! signer, so every CertID must name the same issuer), or a nonce to echo. All statuses are
//! read in one query, one response is signed, and nothing is cached.

use std::sync::Arc;

use chrono::Utc;

use super::{Answer, Caching, Responder, SIGNING_ATTEMPTS};
use crate::cache::keys::purge_tags;
use crate::cache::ResponseCache;
use crate::config::NoncePolicy;
use crate::entry::{CachedResponse, Facts};
use crate::feed::log::ReadStart;
use crate::ocsp::request::OcspRequest;
use crate::ocsp::response::{CertStatusAnswer, SingleAnswer};
use crate::ocsp::OcspErrorStatus;
use crate::serial::Serial;
use crate::store::StatusStore;

impl<C: ResponseCache, S: StatusStore> Responder<C, S> {
    /// Several CertIDs, or a nonce to echo: read all statuses in one query, sign one
    /// response, cache nothing.
    pub async fn answer_fresh(&self, request: OcspRequest) -> Answer {
        let nonce = match (&request.nonce, self.policy.nonce) {
            (Some(nonce), NoncePolicy::Echo) if !nonce.is_acceptable() => {
                return Answer::Error(OcspErrorStatus::MalformedRequest);
            }
            (Some(nonce), NoncePolicy::Echo) => Some(nonce.extn_value.as_ref()),
            _ => None,
        };
        // One response has one signer: every CertID must name the same issuer.
        let served = self.issuers.snapshot();
        let mut issuers = request.certs.iter().map(|cert| served.find(cert));
        let Some(Some(issuer)) = issuers.next() else {
            return Answer::Error(OcspErrorStatus::Unauthorized);
        };
        if !issuers.all(|other| other.is_some_and(|o| o.id == issuer.id)) {
            return Answer::Error(OcspErrorStatus::Unauthorized);
        }
        let keys: Vec<(i32, Serial)> = request.certs.iter().map(|c| (issuer.id, c.serial.clone())).collect();
        // A status change heard while reading or signing means the read may predate it: read
        // again, as a flight does.
        for _ in 0..SIGNING_ATTEMPTS {
            let began = ReadStart::now();
            let records = match self.read_statuses(&keys).await {
                Ok(records) => records,
                Err(failure) => return Answer::Error(failure.status),
            };
            let now = Utc::now();
            let mut answers = Vec::with_capacity(records.len());
            for (cert, record) in request.certs.iter().zip(&records) {
                match self.status_answer(record.as_ref(), now) {
                    Ok(status) => {
                        let (this_update, next_update) = self.validity_window(now, &status);
                        answers.push(SingleAnswer { cert_id: &cert.cert_id, status, this_update, next_update });
                    }
                    Err(refusal) => return Answer::Error(refusal),
                }
            }
            let der = match self.sign(issuer, &answers, nonce, now).await {
                Ok(der) => der,
                Err(failure) => return Answer::Error(failure.status),
            };
            let current = keys.iter().zip(&records).all(|((issuer_id, serial), record)| {
                let version = record.as_ref().map_or(0, |r| r.version);
                self.changes.heard(*issuer_id, serial).read_is_current(version, began)
            });
            if !current {
                continue;
            }
            let all_issued = records.iter().all(Option::is_some);
            let caching = match (nonce, all_issued) {
                (Some(_), _) => Caching::NoStore,
                (None, false) => Caching::NoCache,
                (None, true) => Caching::Public,
            };
            let revoked = answers.iter().any(|a| matches!(a.status, CertStatusAnswer::Revoked { .. }));
            // Several answers may have several thisUpdates: the headers take the earliest (the
            // oldest knowledge in it) and the earliest nextUpdate.
            let facts = Facts {
                revoked,
                status_version: 0,
                this_update: answers.iter().map(|a| a.this_update.timestamp()).min().unwrap_or(now.timestamp()),
                next_update: answers.iter().map(|a| a.next_update.timestamp()).min().unwrap_or(now.timestamp()),
                not_after: i64::MAX,
            };
            let tags = purge_tags(&issuer.name, request.certs.iter().map(|c| &c.serial));
            let Some(response) = CachedResponse::new(&der, facts, &tags).map(Arc::new) else {
                tracing::error!(issuer = %issuer.name, tags, "cannot lay out the response's headers");
                return Answer::Error(OcspErrorStatus::InternalError);
            };
            let changed_at =
                keys.iter().filter_map(|(issuer_id, serial)| self.changes.heard(*issuer_id, serial).changed_at()).max();
            return Answer::Response { response, caching, changed_at };
        }
        tracing::warn!(issuer = %issuer.name, "status kept changing while signing: tryLater");
        Answer::Error(OcspErrorStatus::TryLater)
    }
}
