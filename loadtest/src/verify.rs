//! Checks every answer: a small DER walker over OCSPResponse -> BasicOCSPResponse ->
//! ResponseData -> SingleResponse, cheap enough to run on every response, and an ECDSA P-256
//! signature check (ecdsa-with-SHA256 over the tbsResponseData bytes) on a sample.

use p256::ecdsa::{Signature, VerifyingKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

use jitocsp::ocsp::der::read_tlv;

use crate::corpus::Status;

/// What one answer turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A successful response whose CertID, status and times (and, when sampled, signature) check out.
    Ok(Status),
    /// OCSP tryLater: counted apart from failures.
    TryLater,
    /// Anything else; the name says what was wrong.
    Fail(&'static str),
}

struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    raw: &'a [u8],
}

/// Reads one TLV (definite lengths), returning it and what follows.
fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), &'static str> {
    let (tag, value, rest) = read_tlv(input).ok_or("truncated DER")?;
    Ok((Tlv { tag, value, raw: &input[..input.len() - rest.len()] }, rest))
}

fn expect<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<(Tlv<'a>, &'a [u8]), &'static str> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(what);
    }
    Ok((tlv, rest))
}

const OID_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// The parts of a successful response that are checked.
struct Parsed<'a> {
    tbs: &'a [u8],
    signature: &'a [u8],
    cert_id: &'a [u8],
    status: u8,
    this_update: &'a [u8],
    next_update: Option<&'a [u8]>,
}

/// Walks a response; `Ok(None)` for tryLater.
fn parse(body: &[u8]) -> Result<Option<Parsed<'_>>, &'static str> {
    let (outer, rest) = expect(body, 0x30, "not an OCSPResponse")?;
    if !rest.is_empty() {
        return Err("trailing data after OCSPResponse");
    }
    let (status, rest) = expect(outer.value, 0x0a, "no responseStatus")?;
    match status.value {
        [0] => {}
        [3] => return Ok(None),
        [1] => return Err("malformedRequest"),
        [2] => return Err("internalError"),
        [5] => return Err("sigRequired"),
        [6] => return Err("unauthorized"),
        _ => return Err("bad responseStatus"),
    }
    let (bytes, _) = expect(rest, 0xa0, "successful response without responseBytes")?;
    let (bytes, _) = expect(bytes.value, 0x30, "bad ResponseBytes")?;
    let (oid, rest) = expect(bytes.value, 0x06, "bad responseType")?;
    if oid.value != OID_BASIC {
        return Err("responseType is not id-pkix-ocsp-basic");
    }
    let (octets, _) = expect(rest, 0x04, "bad response OCTET STRING")?;
    let (basic, _) = expect(octets.value, 0x30, "bad BasicOCSPResponse")?;
    let (tbs, rest) = expect(basic.value, 0x30, "bad tbsResponseData")?;
    let (alg, rest) = expect(rest, 0x30, "bad signatureAlgorithm")?;
    let (alg_oid, _) = expect(alg.value, 0x06, "bad signatureAlgorithm")?;
    if alg_oid.value != OID_ECDSA_SHA256 {
        return Err("signatureAlgorithm is not ecdsa-with-SHA256");
    }
    let (sig, _) = expect(rest, 0x03, "bad signature BIT STRING")?;
    let signature = match sig.value {
        [0, der @ ..] => der,
        _ => return Err("bad signature BIT STRING"),
    };
    // ResponseData: [0] version?, responderID ([1] byName | [2] byKey), producedAt, responses, [1] ext?
    let mut rd = tbs.value;
    let (mut item, mut next) = read(rd)?;
    if item.tag == 0xa0 {
        (item, next) = read(next)?;
    }
    if item.tag != 0xa1 && item.tag != 0xa2 {
        return Err("bad responderID");
    }
    rd = next;
    let (_, rd) = expect(rd, 0x18, "bad producedAt")?;
    let (responses, _) = expect(rd, 0x30, "bad responses")?;
    let (single, more) = expect(responses.value, 0x30, "no SingleResponse")?;
    if !more.is_empty() {
        return Err("more than one SingleResponse");
    }
    let (cert_id, rest) = expect(single.value, 0x30, "bad CertID")?;
    let (status, rest) = read(rest)?;
    let (this_update, rest) = expect(rest, 0x18, "bad thisUpdate")?;
    let next_update = match read(rest) {
        Ok((t, _)) if t.tag == 0xa0 => Some(expect(t.value, 0x18, "bad nextUpdate")?.0.value),
        _ => None,
    };
    Ok(Some(Parsed {
        tbs: tbs.raw,
        signature,
        cert_id: cert_id.raw,
        status: status.tag,
        this_update: this_update.value,
        next_update,
    }))
}

/// An issuer's P-256 public key, as the signature check uses it. The check runs on the
/// measured machine, for the first 1000 answers and one in 64 after: ring's verification
/// (assembly) costs the generator less of the CPU it shares with the server than the p256
/// crate's (see docs/benchmarks.md).
pub struct IssuerKey(UnparsedPublicKey<Vec<u8>>);

impl From<&VerifyingKey> for IssuerKey {
    fn from(key: &VerifyingKey) -> Self {
        IssuerKey(UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.to_sec1_point(false).as_bytes().to_vec()))
    }
}

/// Judges one HTTP body against what was asked (`cert_id`, the request's CertID DER) and what
/// the seed says (`expected`). `now` is the current UTC time as GeneralizedTime digits
/// (`YYYYMMDDHHMMSSZ`), which compare like the times. The signature is checked when `key` is given.
pub fn judge(body: &[u8], cert_id: &[u8], expected: Status, now: &[u8], key: Option<&IssuerKey>) -> Verdict {
    let parsed = match parse(body) {
        Ok(Some(p)) => p,
        Ok(None) => return Verdict::TryLater,
        Err(what) => return Verdict::Fail(what),
    };
    if parsed.cert_id != cert_id {
        return Verdict::Fail("CertID not echoed (serial or hashes differ)");
    }
    let status = match parsed.status {
        0x80 => Status::Good,
        0xa1 => Status::Revoked,
        0x82 => return Verdict::Fail("status unknown"),
        _ => return Verdict::Fail("bad certStatus"),
    };
    if status != expected {
        return Verdict::Fail(if status == Status::Good { "good, seeded revoked" } else { "revoked, seeded good" });
    }
    // GeneralizedTime "YYYYMMDDHHMMSSZ" compares lexicographically; allow 60 s of clock skew.
    if parsed.this_update.len() != 15 || parsed.this_update > now {
        return Verdict::Fail("thisUpdate in the future or not YYYYMMDDHHMMSSZ");
    }
    match parsed.next_update {
        Some(next) if next.len() == 15 && next > now => {}
        _ => return Verdict::Fail("no nextUpdate, or past it"),
    }
    if let Some(key) = key {
        if Signature::from_der(parsed.signature).is_err() {
            return Verdict::Fail("signature not DER ECDSA");
        }
        if key.0.verify(parsed.tbs, parsed.signature).is_err() {
            return Verdict::Fail("bad signature");
        }
    }
    Verdict::Ok(status)
}

/// GeneralizedTime digits for `secs` after the Unix epoch, plus `skew` seconds.
pub fn generalized_time(unix_secs: i64) -> [u8; 15] {
    let t = chrono::DateTime::from_timestamp(unix_secs, 0).unwrap_or_default();
    let s = t.format("%Y%m%d%H%M%SZ").to_string();
    let mut out = [b'0'; 15];
    out.copy_from_slice(&s.as_bytes()[..15]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitocsp::ocsp::der::push_tlv as tlv;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;

    /// Builds a response the way an OCSP responder would (byKey, one SingleResponse).
    pub fn response(key: &SigningKey, cert_id: &[u8], status: &[u8], this: &str, next: &str) -> Vec<u8> {
        let mut single = cert_id.to_vec();
        single.extend_from_slice(status);
        tlv(&mut single, 0x18, this.as_bytes());
        let mut next_tlv = Vec::new();
        tlv(&mut next_tlv, 0x18, next.as_bytes());
        tlv(&mut single, 0xa0, &next_tlv);
        let mut single_seq = Vec::new();
        tlv(&mut single_seq, 0x30, &single);
        let mut responses = Vec::new();
        tlv(&mut responses, 0x30, &single_seq);
        let mut rd = Vec::new();
        let mut key_hash = Vec::new();
        tlv(&mut key_hash, 0x04, &[9; 20]);
        tlv(&mut rd, 0xa2, &key_hash);
        tlv(&mut rd, 0x18, this.as_bytes());
        rd.extend_from_slice(&responses);
        let mut tbs = Vec::new();
        tlv(&mut tbs, 0x30, &rd);
        let signature: Signature = key.sign(&tbs);
        let mut basic = tbs.clone();
        basic.extend_from_slice(&[0x30, 0x0a, 0x06, 0x08]);
        basic.extend_from_slice(OID_ECDSA_SHA256);
        let mut bits = vec![0];
        bits.extend_from_slice(signature.to_der().as_bytes());
        tlv(&mut basic, 0x03, &bits);
        let mut basic_seq = Vec::new();
        tlv(&mut basic_seq, 0x30, &basic);
        let mut rb = Vec::new();
        tlv(&mut rb, 0x06, OID_BASIC);
        tlv(&mut rb, 0x04, &basic_seq);
        let mut rb_seq = Vec::new();
        tlv(&mut rb_seq, 0x30, &rb);
        let mut outer = vec![0x0a, 0x01, 0x00];
        tlv(&mut outer, 0xa0, &rb_seq);
        let mut out = Vec::new();
        tlv(&mut out, 0x30, &outer);
        out
    }

    #[test]
    fn judges_good_revoked_trylater_and_forgeries() {
        let key = SigningKey::from_slice(&[5u8; 32]).unwrap();
        let vk = IssuerKey::from(key.verifying_key());
        let id = vec![0x30, 0x03, 0x02, 0x01, 0x07];
        let now = b"20260101000000Z";
        let good = response(&key, &id, &[0x80, 0x00], "20251231000000Z", "20260105000000Z");
        assert_eq!(judge(&good, &id, Status::Good, now, Some(&vk)), Verdict::Ok(Status::Good));
        assert!(matches!(judge(&good, &id, Status::Revoked, now, Some(&vk)), Verdict::Fail(_)));
        let other = vec![0x30, 0x03, 0x02, 0x01, 0x08];
        assert!(matches!(judge(&good, &other, Status::Good, now, None), Verdict::Fail(_)));
        let revoked = response(&key, &id, &[0xa1, 0x11, 0x18, 0x0f], "", "");
        assert!(matches!(judge(&revoked, &id, Status::Revoked, now, None), Verdict::Fail(_)));
        let mut revoked_info = vec![0xa1, 0x11];
        tlv(&mut revoked_info, 0x18, b"20251230000000Z");
        let revoked = response(&key, &id, &revoked_info, "20251231000000Z", "20260105000000Z");
        assert_eq!(judge(&revoked, &id, Status::Revoked, now, Some(&vk)), Verdict::Ok(Status::Revoked));
        let expired = response(&key, &id, &[0x80, 0x00], "20251220000000Z", "20251224000000Z");
        assert!(matches!(judge(&expired, &id, Status::Good, now, None), Verdict::Fail(_)));
        let mut tampered = good.clone();
        let pos = tampered.windows(15).position(|w| w == b"20260105000000Z").unwrap();
        tampered[pos + 3] = b'7';
        assert_eq!(judge(&tampered, &id, Status::Good, now, None), Verdict::Ok(Status::Good));
        assert_eq!(judge(&tampered, &id, Status::Good, now, Some(&vk)), Verdict::Fail("bad signature"));
        assert_eq!(judge(&[0x30, 0x03, 0x0a, 0x01, 0x03], &id, Status::Good, now, None), Verdict::TryLater);
        assert_eq!(judge(&[0x30, 0x03, 0x0a, 0x01, 0x06], &id, Status::Good, now, None), Verdict::Fail("unauthorized"));
        assert!(matches!(judge(b"<html>", &id, Status::Good, now, None), Verdict::Fail(_)));
        assert_eq!(&generalized_time(0), b"19700101000000Z");
    }
}
