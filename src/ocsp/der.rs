//! The few DER primitives the crate writes and reads by hand: the envelope around an
//! already-encoded `ResponseData` (so the bytes that were signed are exactly the bytes that
//! are sent), OCSP requests ([`super::request::encode`]) and key and signature encodings.
//! The one TLV writer of the workspace (the load generator uses it too).

pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_ENUMERATED: u8 = 0x0a;
/// `[0]` constructed, context-specific (an EXPLICIT `[0]` wrapper).
pub const TAG_CONTEXT_0: u8 = 0xa0;

/// Number of bytes the DER length of `len` takes.
pub fn length_len(len: usize) -> usize {
    match len {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xff_ffff => 4,
        _ => 5,
    }
}

/// Appends a definite-form DER length.
pub fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = (len as u32).to_be_bytes();
    let skip = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    out.push(0x80 | (4 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Total encoded size of a TLV with `content_len` bytes of content.
pub fn tlv_len(content_len: usize) -> usize {
    1 + length_len(content_len) + content_len
}

/// Appends tag and length; the caller appends `content_len` bytes of content next.
pub fn write_header(out: &mut Vec<u8>, tag: u8, content_len: usize) {
    out.push(tag);
    write_length(out, content_len);
}

/// Appends one TLV: tag, definite length, `content`.
pub fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    write_header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// One TLV as a new vector.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tlv_len(content.len()));
    push_tlv(&mut out, tag, content);
    out
}

/// Reads one TLV from the front of `input`: (tag, content, rest). Definite lengths only.
pub fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_at_every_width() {
        for len in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0x12_3456] {
            let mut out = Vec::new();
            write_header(&mut out, TAG_OCTET_STRING, len);
            assert_eq!(out.len(), tlv_len(len) - len, "header size for {len}");
            out.resize(out.len() + len, 0xab);
            let (tag, content, rest) = read_tlv(&out).unwrap();
            assert_eq!((tag, content.len(), rest.len()), (TAG_OCTET_STRING, len, 0));
        }
    }

    #[test]
    fn tlv_writes_header_then_content() {
        assert_eq!(tlv(TAG_INTEGER, &[0x0a, 0xbc]), [0x02, 0x02, 0x0a, 0xbc]);
        let long = tlv(TAG_OCTET_STRING, &[7; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), tlv_len(300));
        let mut out = vec![0xff];
        push_tlv(&mut out, TAG_SEQUENCE, &[]);
        assert_eq!(out, [0xff, 0x30, 0x00]);
    }

    #[test]
    fn truncated_input_is_refused() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(read_tlv(&[0x30, 0x81]).is_none());
    }
}
