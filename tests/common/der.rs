//! Minimal DER reading and writing, to make request variants openssl does not produce.

/// The TLVs of `data` as (tag, contents). Single-octet tags, definite lengths.
fn items(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let tag = data[0];
        let (len, header) = match data[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let k = (n & 0x7f) as usize;
                (data[2..2 + k].iter().fold(0usize, |acc, b| acc << 8 | *b as usize), 2 + k)
            }
        };
        out.push((tag, &data[header..header + len]));
        data = &data[header + len..];
    }
    out
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

const SHA1_OID: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// `request` with the NULL parameters of its hash AlgorithmIdentifiers left out (as some
/// clients send them): the other two CertID forms a responder must echo exactly.
pub fn without_hash_parameters(request: &[u8]) -> Vec<u8> {
    fn rewrite(tag: u8, contents: &[u8]) -> Vec<u8> {
        if tag & 0x20 == 0 {
            return tlv(tag, contents);
        }
        let children = items(contents);
        if let [(0x06, oid), (0x05, [])] = children.as_slice() {
            if tag == 0x30 && (*oid == SHA1_OID || *oid == SHA256_OID) {
                return tlv(0x30, &tlv(0x06, oid));
            }
        }
        tlv(tag, &children.iter().flat_map(|(t, c)| rewrite(*t, c)).collect::<Vec<u8>>())
    }
    let [(tag, contents)] = items(request)[..] else { panic!("not one DER element") };
    let out = rewrite(tag, contents);
    assert_ne!(out, request, "the request had no NULL hash parameters");
    out
}

/// `request` (made with -no_nonce) with a nonce extension (RFC 9654) of `nonce` added.
pub fn with_nonce(request: &[u8], nonce: &[u8]) -> Vec<u8> {
    let [(0x30, outer)] = items(request)[..] else { panic!("not an OCSPRequest") };
    let [(0x30, tbs), ref rest @ ..] = items(outer)[..] else { panic!("no TBSRequest") };
    assert!(items(tbs).iter().all(|(t, _)| *t != 0xa2), "the request already has extensions");
    let nonce_oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
    let extension = tlv(0x30, &[tlv(0x06, &nonce_oid), tlv(0x04, &tlv(0x04, nonce))].concat());
    let extensions = tlv(0xa2, &tlv(0x30, &extension));
    let tbs = tlv(0x30, &[tbs, &extensions].concat());
    let rest: Vec<u8> = rest.iter().flat_map(|(t, c)| tlv(*t, c)).collect();
    tlv(0x30, &[tbs, rest].concat())
}

/// Standard base64 of `der`.
pub fn b64(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}
