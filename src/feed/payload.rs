//! Status-change notifications: how an admin change reaches every running responder.
//!
//! The admin CLI, inside the transaction that changes a status, runs
//! `NOTIFY jitocsp_status, '<payload>'` for each changed certificate. Postgres delivers the
//! notification to every listening responder only if and when that transaction commits, so a
//! responder never hears of a change that did not happen. Responders drop their own copies of
//! the response and remember the change (see [`crate::feed::log::ChangeLog`]), so that a cached
//! response whose status was read before the change (at a lower status version) is never
//! served again, even if the Redis purge was lost or the read came from a lagging replica.

use crate::serial::Serial;

/// The Postgres channel name.
pub const CHANNEL: &str = "jitocsp_status";

/// One committed status change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub issuer_id: i32,
    pub serial: Serial,
    /// The new status: true once revoked, false after an unrevoke.
    pub revoked: bool,
    /// The change's number from `status_change_seq` (`certificates.changed_version`).
    pub version: i64,
}

/// A payload that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("malformed status notification payload {0:?}")]
pub struct PayloadError(pub String);

impl StatusChange {
    /// `<issuer_id> <serialhex> revoked|good <version>`
    pub fn to_payload(&self) -> String {
        format!("{} {} {} {}", self.issuer_id, self.serial, if self.revoked { "revoked" } else { "good" }, self.version)
    }

    pub fn parse(payload: &str) -> Result<Self, PayloadError> {
        let bad = || PayloadError(payload.to_owned());
        let mut parts = payload.split(' ');
        let issuer_id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let serial = parts.next().and_then(|p| Serial::from_hex(p).ok()).ok_or_else(bad)?;
        let revoked = match parts.next() {
            Some("revoked") => true,
            Some("good") => false,
            _ => return Err(bad()),
        };
        let version = parts.next().and_then(|p| p.parse::<i64>().ok()).filter(|v| *v > 0).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(StatusChange { issuer_id, serial, revoked, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let change = StatusChange {
            issuer_id: 3,
            serial: Serial::from_hex("ff00").unwrap(),
            revoked: true,
            version: 1_700_000_000_123_456,
        };
        let payload = change.to_payload();
        assert_eq!(payload, "3 ff00 revoked 1700000000123456");
        assert_eq!(StatusChange::parse(&payload).unwrap(), change);
    }

    #[test]
    fn foreign_payloads_are_rejected() {
        for p in [
            "",
            "3",
            "3 ff00",
            "x ff00 revoked 1",
            "3 zz revoked 1",
            "3 ff00 maybe 1",
            "3 ff00 good 1 extra",
            "3 ff00 good 0",
        ] {
            assert!(StatusChange::parse(p).is_err(), "{p:?}");
        }
    }
}
