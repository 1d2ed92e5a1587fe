//! Certificate serial numbers, in the one canonical form jitocsp stores and keys on.
//!
//! A serial is an ASN.1 INTEGER. Requests carry it as DER integer contents; operators type it
//! in hex, with or without colons, any case, sometimes with a leading `00`. Everything is
//! normalised to the minimal two's-complement big-endian bytes (the DER contents), so that the
//! same certificate always has the same Postgres key, Redis key and hex spelling.

use std::fmt;

/// Longest serial accepted. RFC 5280 allows 20 octets; one more covers the sign byte that a
/// positive 20-octet serial with its top bit set needs.
pub const MAX_SERIAL_LEN: usize = 21;

/// A certificate serial number as minimal DER INTEGER contents.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Box<[u8]>);

/// Why a serial could not be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialError {
    #[error("serial is empty")]
    Empty,
    #[error("serial {0:?} is not hexadecimal (digits 0-9, a-f, optionally separated by ':')")]
    NotHex(String),
    #[error("serial is {0} octets long; at most {max} are allowed", max = MAX_SERIAL_LEN)]
    TooLong(usize),
    #[error("serial is negative or zero; certificate serials are positive (RFC 5280 4.1.2.2)")]
    NotPositive,
}

impl Serial {
    /// Parses operator input: hex digits, optional `0x` prefix, optional colons, any case.
    pub fn from_hex(input: &str) -> Result<Self, SerialError> {
        let trimmed = input.trim();
        let trimmed = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")).unwrap_or(trimmed);
        // Decoded in one pass without copies: a mass revocation reads millions of these.
        let digits = || trimmed.bytes().filter(|b| *b != b':');
        let count = digits().count();
        if count == 0 {
            return Err(SerialError::Empty);
        }
        let mut magnitude = Vec::with_capacity(count.div_ceil(2));
        // An odd count: the first digit stands alone, as if a 0 preceded it.
        let mut high: Option<u8> = (count % 2 == 1).then_some(0);
        for digit in digits() {
            let Some(value) = (digit as char).to_digit(16) else {
                return Err(SerialError::NotHex(input.trim().to_owned()));
            };
            // to_digit(16) is below 16.
            let value = value as u8;
            match high.take() {
                Some(h) => magnitude.push(h << 4 | value),
                None => high = Some(value),
            }
        }
        Self::from_unsigned_be(&magnitude)
    }

    /// Builds a serial from an unsigned big-endian magnitude (leading zeros allowed).
    pub fn from_unsigned_be(magnitude: &[u8]) -> Result<Self, SerialError> {
        let first_nonzero = magnitude.iter().position(|b| *b != 0);
        let Some(start) = first_nonzero else {
            return Err(SerialError::NotPositive);
        };
        let significant = &magnitude[start..];
        let mut bytes = Vec::with_capacity(significant.len() + 1);
        if significant[0] & 0x80 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(significant);
        if bytes.len() > MAX_SERIAL_LEN {
            return Err(SerialError::TooLong(bytes.len()));
        }
        Ok(Serial(bytes.into_boxed_slice()))
    }

    /// Builds a serial from two's-complement big-endian bytes, as found in an INTEGER.
    /// Non-minimal encodings (redundant leading 0x00) are accepted and normalised.
    pub fn from_signed_be(bytes: &[u8]) -> Result<Self, SerialError> {
        match bytes.first() {
            None => Err(SerialError::Empty),
            Some(b) if b & 0x80 != 0 => Err(SerialError::NotPositive),
            Some(_) => Self::from_unsigned_be(bytes),
        }
    }

    /// The minimal DER INTEGER contents: the form stored in Postgres.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex of the magnitude without the sign byte, as operators and CDNs see it
    /// (`openssl x509 -serial` prints the same digits).
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(2 * self.magnitude().len());
        self.push_hex(&mut hex);
        hex
    }

    /// Appends [`Serial::to_hex`]'s digits to `out`, allocating nothing more (cache keys are
    /// built on every request).
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in self.magnitude() {
            out.push(DIGITS[usize::from(byte >> 4)] as char);
            out.push(DIGITS[usize::from(byte & 0x0f)] as char);
        }
    }

    fn magnitude(&self) -> &[u8] {
        match self.0.as_ref() {
            [0, rest @ ..] if !rest.is_empty() => rest,
            all => all,
        }
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl std::str::FromStr for Serial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_spellings_normalise_to_one_serial() {
        let a = Serial::from_hex("0A:1b:FF").unwrap();
        let b = Serial::from_hex("a1bff").unwrap();
        let c = Serial::from_hex("000a1bff").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.as_bytes(), &[0x0a, 0x1b, 0xff]);
        assert_eq!(a.to_hex(), "0a1bff");
    }

    #[test]
    fn high_bit_gets_a_sign_byte_but_hex_hides_it() {
        let s = Serial::from_hex("ff01").unwrap();
        assert_eq!(s.as_bytes(), &[0x00, 0xff, 0x01]);
        assert_eq!(s.to_hex(), "ff01");
        assert_eq!(Serial::from_signed_be(&[0x00, 0xff, 0x01]).unwrap(), s);
        assert_eq!(Serial::from_signed_be(&[0x00, 0x00, 0x7f]).unwrap().as_bytes(), &[0x7f]);
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(Serial::from_hex(""), Err(SerialError::Empty));
        assert_eq!(Serial::from_hex(" : "), Err(SerialError::Empty));
        assert!(matches!(Serial::from_hex("12xz"), Err(SerialError::NotHex(s)) if s == "12xz"));
        assert_eq!(Serial::from_hex("00"), Err(SerialError::NotPositive));
        assert_eq!(Serial::from_signed_be(&[0x80]), Err(SerialError::NotPositive));
        assert_eq!(Serial::from_hex(&"ab".repeat(21)), Err(SerialError::TooLong(22)));
        assert!(Serial::from_hex(&"7f".repeat(21)).is_ok());
    }
}
