//! RFC 5280 CRLReason names, as `admin revoke --reason` accepts them.

use std::fmt;

/// A revocation reason the admin tool may set.
///
/// `removeFromCRL` (8) is a delta-CRL artefact and never a reason to revoke; undoing a
/// certificateHold is `admin unrevoke`. Code 7 is unassigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::CertificateHold,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    /// The CRLReason code stored in `certificates.reason`.
    pub fn code(self) -> i16 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::CaCompromise => 2,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
            Reason::CertificateHold => 6,
            Reason::PrivilegeWithdrawn => 9,
            Reason::AaCompromise => 10,
        }
    }

    /// The RFC 5280 name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::CertificateHold => "certificateHold",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    pub fn from_code(code: i16) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Parses an RFC 5280 reason name. Matching ignores case (`keycompromise` is
    /// `keyCompromise`); numbers are not accepted, so a typo cannot pick the wrong reason.
    pub fn parse(input: &str) -> Result<Reason, String> {
        let wanted = input.trim();
        if let Some(r) = Reason::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(wanted)) {
            return Ok(r);
        }
        if wanted.eq_ignore_ascii_case("removeFromCRL") {
            return Err(format!(
                "reason {input:?} is not allowed: removeFromCRL only exists in delta CRLs; \
                 to undo a certificateHold use `jitocsp admin unrevoke`"
            ));
        }
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        Err(format!("unknown revocation reason {input:?}; expected one of: {}", names.join(", ")))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stored reason code as text: its name when known, else `code N`.
pub fn describe_code(code: i16) -> String {
    match Reason::from_code(code) {
        Some(r) => format!("{} ({})", r.name(), code),
        None if code == 8 => "removeFromCRL (8)".to_owned(),
        None => format!("code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.name()), Ok(r));
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::parse("KEYCOMPROMISE"), Ok(Reason::KeyCompromise));
        assert_eq!(Reason::CaCompromise.code(), 2);
        assert_eq!(Reason::AaCompromise.code(), 10);
        assert!(Reason::parse("removeFromCRL").unwrap_err().contains("not allowed"));
        let e = Reason::parse("bogus").unwrap_err();
        assert!(e.contains("\"bogus\"") && e.contains("keyCompromise"), "{e}");
        assert!(Reason::parse("1").is_err());
        assert_eq!(Reason::from_code(7), None);
        assert_eq!(Reason::from_code(8), None);
    }
}
