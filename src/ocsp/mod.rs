//! The OCSP protocol, with no I/O: decoding requests and encoding responses (RFC 6960,
//! profiled by RFC 9919; nonces per RFC 9654).
//!
//! - [`request`] turns request bytes into a [`request::OcspRequest`]: the CertIDs asked
//!   about and the nonce, or a [`request::Malformed`] error.
//! - [`response`] builds the `ResponseData` to be signed and wraps the signature into the
//!   final `OCSPResponse` DER without re-encoding the signed bytes. It also holds the
//!   pre-encoded error responses.
//! - [`der`] is the handful of DER primitives both need.

pub mod der;
pub mod oids;
pub mod request;
pub mod response;

/// The top-level status of an OCSP response (RFC 6960 section 4.2.1): how a request ended,
/// for logs and metrics. An answer that is not a signed response carries an
/// [`OcspErrorStatus`] instead, in which "successful" cannot be said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseStatus {
    Successful,
    MalformedRequest,
    InternalError,
    TryLater,
    Unauthorized,
}

impl ResponseStatus {
    /// Short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStatus::Successful => "successful",
            ResponseStatus::MalformedRequest => "malformedRequest",
            ResponseStatus::InternalError => "internalError",
            ResponseStatus::TryLater => "tryLater",
            ResponseStatus::Unauthorized => "unauthorized",
        }
    }
}

/// The status of an unsigned error response (RFC 6960 section 4.2.1). "successful" is not
/// one: a successful response always has a signed body. sigRequired is left out because
/// jitocsp never requires signed requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcspErrorStatus {
    MalformedRequest,
    InternalError,
    TryLater,
    Unauthorized,
}

impl From<OcspErrorStatus> for ResponseStatus {
    fn from(status: OcspErrorStatus) -> Self {
        match status {
            OcspErrorStatus::MalformedRequest => ResponseStatus::MalformedRequest,
            OcspErrorStatus::InternalError => ResponseStatus::InternalError,
            OcspErrorStatus::TryLater => ResponseStatus::TryLater,
            OcspErrorStatus::Unauthorized => ResponseStatus::Unauthorized,
        }
    }
}

/// The hash algorithm of a CertID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
}

/// RFC 5280 CRLReason codes that jitocsp records (removeFromCRL, 8, is a CRL-only value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RevocationReason {
    Unspecified = 0,
    KeyCompromise = 1,
    CaCompromise = 2,
    AffiliationChanged = 3,
    Superseded = 4,
    CessationOfOperation = 5,
    CertificateHold = 6,
    PrivilegeWithdrawn = 9,
    AaCompromise = 10,
}

impl RevocationReason {
    /// Every reason, with its RFC 5280 name, as operators type it.
    pub const NAMES: [(&'static str, RevocationReason); 9] = [
        ("unspecified", RevocationReason::Unspecified),
        ("keyCompromise", RevocationReason::KeyCompromise),
        ("cACompromise", RevocationReason::CaCompromise),
        ("affiliationChanged", RevocationReason::AffiliationChanged),
        ("superseded", RevocationReason::Superseded),
        ("cessationOfOperation", RevocationReason::CessationOfOperation),
        ("certificateHold", RevocationReason::CertificateHold),
        ("privilegeWithdrawn", RevocationReason::PrivilegeWithdrawn),
        ("aACompromise", RevocationReason::AaCompromise),
    ];

    /// The CRLReason code, as stored in `certificates.reason`.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        Self::NAMES.iter().map(|(_, r)| *r).find(|r| r.code() == code)
    }

    /// Looks up an RFC 5280 name, ignoring case (`keycompromise` is `keyCompromise`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.trim())).map(|(_, r)| *r)
    }

    /// Parses operator input, with a message naming the problem and the accepted names.
    /// Numbers are not accepted, so a typo cannot pick the wrong reason.
    pub fn parse(input: &str) -> Result<Self, String> {
        if let Some(reason) = Self::from_name(input) {
            return Ok(reason);
        }
        if input.trim().eq_ignore_ascii_case("removeFromCRL") {
            return Err(format!(
                "reason {input:?} is not allowed: removeFromCRL only exists in delta CRLs; \
                 to undo a certificateHold use `jitocsp admin unrevoke`"
            ));
        }
        let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
        Err(format!("unknown revocation reason {input:?}; expected one of: {}", names.join(", ")))
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, r)| *r == self).map(|(n, _)| *n).unwrap_or("unspecified")
    }

    /// A stored reason code as text: `name (code)` when known, else `code N`.
    pub fn describe_code(code: i16) -> String {
        match Self::from_code(code) {
            Some(reason) => format!("{} ({code})", reason.name()),
            None if code == 8 => "removeFromCRL (8)".to_owned(),
            None => format!("code {code}"),
        }
    }
}

impl std::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_and_codes_agree() {
        for (name, reason) in RevocationReason::NAMES {
            assert_eq!(RevocationReason::from_name(name), Some(reason));
            assert_eq!(RevocationReason::from_code(reason as i16), Some(reason));
            assert_eq!(reason.name(), name);
        }
        assert_eq!(RevocationReason::from_code(8), None);
        assert_eq!(RevocationReason::from_code(7), None);
        assert_eq!(RevocationReason::from_name("removeFromCRL"), None);
        assert_eq!(RevocationReason::parse("KEYCOMPROMISE"), Ok(RevocationReason::KeyCompromise));
        assert_eq!(RevocationReason::AaCompromise.code(), 10);
        assert!(RevocationReason::parse("removeFromCRL").unwrap_err().contains("not allowed"));
        let e = RevocationReason::parse("bogus").unwrap_err();
        assert!(e.contains("\"bogus\"") && e.contains("keyCompromise"), "{e}");
        assert!(RevocationReason::parse("1").is_err());
        assert_eq!(RevocationReason::describe_code(1), "keyCompromise (1)");
        assert_eq!(RevocationReason::describe_code(8), "removeFromCRL (8)");
    }
}
