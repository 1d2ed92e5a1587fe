//! Status-change notifications: how an admin change reaches every running responder.
//!
//! The admin CLI, inside the transaction that changes a status, runs
//! `NOTIFY jitocsp_status, '<payload>'`. Postgres delivers the notification to every
//! listening responder only if and when that transaction commits, so a responder never hears
//! of a change that did not happen. Responders drop their own copies of the response and
//! remember the change (see [`crate::feed::log::ChangeLog`]), so that a cached response whose
//! status was read before the change (at a lower status version) is never served again, even
//! if the Redis purge was lost or the read came from a lagging replica.
//!
//! One notification carries many changes ([`StatusChanges`]): those of one transaction, to
//! certificates of one issuer, with one new status. They share the transaction's status
//! version, which is exact for every one of them (a transaction takes one version and stamps
//! it on every row it changes), so a mass revocation sends one notification per couple of
//! hundred certificates instead of one per certificate to every listener.
//!
//! Every process of a deployment runs the same version of jitocsp, so only this format is
//! read; a payload of another format is refused (and logged) like any foreign payload.

use crate::serial::Serial;

/// The Postgres channel name.
pub const CHANNEL: &str = "jitocsp_status";

/// Postgres refuses a payload of 8000 bytes or more; this leaves a margin.
pub const MAX_PAYLOAD: usize = 7900;

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

/// The changes one notification carries: certificates of one issuer that got the same new
/// status at the same version (in one transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChanges {
    pub issuer_id: i32,
    pub revoked: bool,
    pub version: i64,
    /// At least one.
    pub serials: Vec<Serial>,
}

/// A payload that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("malformed status notification payload {0:?}")]
pub struct PayloadError(pub String);

impl StatusChanges {
    /// The payloads announcing that `serials` of `issuer_id` became revoked (or good) at
    /// `version`: `<issuer_id> revoked|good <version> <serialhex> [<serialhex> ...]`, as many
    /// serials per payload as fit in [`MAX_PAYLOAD`] bytes, in the given order.
    pub fn payloads(issuer_id: i32, revoked: bool, version: i64, serials: &[&Serial]) -> Vec<String> {
        let head = format!("{issuer_id} {} {version}", if revoked { "revoked" } else { "good" });
        let mut payloads = Vec::new();
        let mut current = head.clone();
        for serial in serials {
            let hex = serial.to_hex();
            if current.len() > head.len() && current.len() + 1 + hex.len() > MAX_PAYLOAD {
                payloads.push(std::mem::replace(&mut current, head.clone()));
            }
            current.push(' ');
            current.push_str(&hex);
        }
        if current.len() > head.len() {
            payloads.push(current);
        }
        payloads
    }

    /// Reads a payload made by [`StatusChanges::payloads`]; anything else is refused.
    pub fn parse(payload: &str) -> Result<Self, PayloadError> {
        let bad = || PayloadError(payload.to_owned());
        let mut parts = payload.split(' ');
        let issuer_id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let revoked = match parts.next() {
            Some("revoked") => true,
            Some("good") => false,
            _ => return Err(bad()),
        };
        let version = parts.next().and_then(|p| p.parse::<i64>().ok()).filter(|v| *v > 0).ok_or_else(bad)?;
        // Exactly as `payloads` writes them: lowercase hex digits, one space apart.
        let serials = parts
            .map(|p| {
                let canonical = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                canonical.then(|| Serial::from_hex(p).ok()).flatten().ok_or_else(bad)
            })
            .collect::<Result<Vec<Serial>, PayloadError>>()?;
        if serials.is_empty() {
            return Err(bad());
        }
        Ok(StatusChanges { issuer_id, revoked, version, serials })
    }

    /// Each change, one per serial.
    pub fn changes(&self) -> impl Iterator<Item = StatusChange> + '_ {
        self.serials.iter().map(|serial| StatusChange {
            issuer_id: self.issuer_id,
            serial: serial.clone(),
            revoked: self.revoked,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serials(n: u64) -> Vec<Serial> {
        // 20-octet serials, the longest RFC 5280 allows (and the fewest per payload).
        (0..n)
            .map(|i| Serial::from_hex(&format!("7f{:038x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).unwrap())
            .collect()
    }

    #[test]
    fn payload_round_trips() {
        let serial = Serial::from_hex("ff00").unwrap();
        let payloads = StatusChanges::payloads(3, true, 1_700_000_000_123_456, &[&serial]);
        assert_eq!(payloads, ["3 revoked 1700000000123456 ff00"]);
        let parsed = StatusChanges::parse(&payloads[0]).unwrap();
        let change = StatusChange { issuer_id: 3, serial, revoked: true, version: 1_700_000_000_123_456 };
        assert_eq!(parsed.changes().collect::<Vec<_>>(), [change]);
        let good = StatusChanges::payloads(3, false, 9, &[&Serial::from_hex("0a").unwrap()]);
        assert_eq!(good, ["3 good 9 0a"]);
        assert!(!StatusChanges::parse(&good[0]).unwrap().revoked);
    }

    #[test]
    fn many_changes_are_split_under_the_postgres_limit_each_serial_once_in_order() {
        let all = serials(1000);
        let refs: Vec<&Serial> = all.iter().collect();
        let payloads = StatusChanges::payloads(7, true, 42, &refs);
        assert!(payloads.len() > 1 && payloads.len() < 20, "{} payloads", payloads.len());
        let mut heard = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD && p.len() < 8000, "{} bytes", p.len());
            let parsed = StatusChanges::parse(p).unwrap();
            assert_eq!((parsed.issuer_id, parsed.revoked, parsed.version), (7, true, 42));
            heard.extend(parsed.serials);
        }
        assert_eq!(heard, all);
        assert!(StatusChanges::payloads(7, true, 42, &[]).is_empty());
    }

    #[test]
    fn foreign_payloads_are_rejected() {
        for p in [
            "",
            "3",
            "3 revoked",
            "3 revoked 1",
            "3 revoked 1 ",
            "3 revoked 1 ff00  0a",
            "x revoked 1 ff00",
            "3 maybe 1 ff00",
            "3 revoked 0 ff00",
            "3 revoked -1 ff00",
            "3 revoked 1 zz",
            "3 revoked 1 FF00",
            "3 revoked 1 ff:00",
            "3 revoked 1 0xff00",
            "3 revoked 1 00",
            // The format before changes were batched.
            "3 ff00 revoked 1",
        ] {
            assert!(StatusChanges::parse(p).is_err(), "{p:?}");
        }
    }
}
