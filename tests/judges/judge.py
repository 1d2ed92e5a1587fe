#!/usr/bin/env python3
"""judge.py - external judge for OCSP responses produced by jitocsp.

Independent of the Rust code on purpose: it parses with Python `cryptography` and
lints with `pkilint`, so a bug shared by our encoder and our decoder cannot pass.

Usage:
  judge.py RESPONSE.der [--issuer ISSUER.pem] [--request REQUEST.der] [--expect-nonce]
           [--expect-status successful|malformedRequest|unauthorized|tryLater|internalError|sigRequired]
           [--expect-cert-status good|revoked|unknown] [--expect-extended-revoke]
           [--expect-reason REASON|none] [--expect-revocation-time RFC3339] [--validity SECS]
           [--headers HEADERS.txt [--expect-cache public|no-cache|no-store]
            [--max-age-cap SECS] [--refresh-after SECS]] [--lint] [--no-time-check]

Checks (the first failure ends the run; --lint findings are printed in full):
  * the file is a DER OCSPResponse; responseStatus equals --expect-status (default
    successful); a non-successful response carries no responseBytes
  * successful: prints every SingleResponse (serial, status, thisUpdate, nextUpdate,
    revocation time/reason); every one has a nextUpdate later than thisUpdate; unless
    --no-time-check, thisUpdate is not in the future (2 min skew) and nextUpdate has
    not passed
  * --expect-cert-status: every SingleResponse has that status
  * --issuer: each CertID's issuerNameHash/issuerKeyHash match the issuer (with the
    CertID's own hash algorithm); the signature verifies (ECDSA P-256/P-384, RSA
    PKCS#1 v1.5, Ed25519) with the issuer key, or - when `certs` is non-empty - with
    the delegated responder certificate, which must then be directly issued by the
    issuer and carry id-kp-OCSPSigning; the ResponderID (byKey or byName) names the
    signer
  * --expect-reason / --expect-revocation-time: every revoked SingleResponse has that
    revocationReason ("none": the field is omitted) and revocationTime
  * --expect-extended-revoke: the "revoked" answer for a serial that was never issued
    (RFC 6960 section 2.2): revocationTime 1970-01-01T00:00:00Z, reason certificateHold, and
    the non-critical id-pkix-ocsp-extended-revoke response extension with a NULL value
  * --validity: nextUpdate - thisUpdate equals SECS in every SingleResponse
  * --request: the request is parsed with the small DER reader below (not with the
    library under test, nor with `cryptography`, which reads one CertID only); the
    response has one SingleResponse per CertID of the request and each CertID is echoed
    byte for byte (hash algorithm with its parameters as sent, hashes, serial). The
    response carries a nonce only if the request did, and then the exact same
    extnValue bytes; --expect-nonce: it must carry it
  * --headers: the HTTP response headers (one "Name: value" per line) agree with the DER:
    Content-Type application/ocsp-response; a cacheable response (--expect-cache public,
    the default for a successful response) has ETag = quoted hex SHA-256 of the DER,
    Last-Modified = thisUpdate and Expires = nextUpdate (IMF-fixdate, GMT), and
    Cache-Control "max-age=N, public, no-transform, must-revalidate" where N does not
    reach past nextUpdate, --max-age-cap SECS or thisUpdate + --refresh-after SECS (and,
    when --refresh-after is given, is no more than 2 minutes short of that deadline);
    --expect-cache no-store / no-cache: Cache-Control is "no-store" / "max-age=0,
    no-cache". Error responses: Cache-Control "max-age=0, no-cache"
  * --lint: pkilint's RFC 6960 OCSP response linter (what `lint_ocsp_response lint FILE`
    runs); ANY finding of any severity (including INFO and NOTICE) is a failure
Exit status: 0 all checks passed, 1 a check failed (last line `FAIL: reason`), 2 bad usage.
Needs: pip install cryptography pkilint (scripts/test.sh installs them).
"""

import argparse
import datetime
import email.utils
import hashlib
import sys

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import ExtendedKeyUsageOID, OCSPExtensionOID
except ImportError as e:  # pragma: no cover
    print(f"FAIL: python 'cryptography' is not installed ({e}); pip install cryptography")
    sys.exit(1)

STATUSES = {
    "successful": ocsp.OCSPResponseStatus.SUCCESSFUL,
    "malformedRequest": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "internalError": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
    "tryLater": ocsp.OCSPResponseStatus.TRY_LATER,
    "sigRequired": ocsp.OCSPResponseStatus.SIG_REQUIRED,
    "unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
}
STATUS_NAMES = {v: k for k, v in STATUSES.items()}
CERT_STATUSES = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
}
CERT_STATUS_NAMES = {v: k for k, v in CERT_STATUSES.items()}
CLOCK_SKEW = datetime.timedelta(minutes=2)
# RFC 5280 reason names as the command line spells them -> cryptography's ReasonFlags names.
REASONS = {
    "unspecified": "unspecified",
    "keyCompromise": "key_compromise",
    "cACompromise": "ca_compromise",
    "affiliationChanged": "affiliation_changed",
    "superseded": "superseded",
    "cessationOfOperation": "cessation_of_operation",
    "certificateHold": "certificate_hold",
    "privilegeWithdrawn": "privilege_withdrawn",
    "aACompromise": "aa_compromise",
    "none": "none",
}


def parse_time(text):
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise Fail(f"{text}: a time zone is needed")
    return value


class Fail(Exception):
    pass


def utc(obj, name):
    """Timezone-aware datetime attribute (cryptography >= 43 has *_utc variants)."""
    value = getattr(obj, name + "_utc", None)
    if value is None:
        value = getattr(obj, name)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def load_cert(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise Fail(f"cannot parse certificate {path}: {e}")


def key_hash(cert, algorithm=None):
    """Hash of the subjectPublicKey BIT STRING contents (CertID / ResponderID byKey)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if algorithm is None:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    bits = _spki_bitstring(spki)
    h = hashes.Hash(algorithm)
    h.update(bits)
    return h.finalize()


def _der_len(buf, i):
    first = buf[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    return int.from_bytes(buf[i + 1 : i + 1 + n], "big"), i + 1 + n


def _spki_bitstring(spki):
    """Contents (after the unused-bits octet) of subjectPublicKey in an SPKI DER."""
    assert spki[0] == 0x30
    _, i = _der_len(spki, 1)  # into SEQUENCE
    assert spki[i] == 0x30  # AlgorithmIdentifier
    alen, j = _der_len(spki, i + 1)
    i = j + alen
    assert spki[i] == 0x03  # BIT STRING
    blen, j = _der_len(spki, i + 1)
    return spki[j + 1 : j + blen]


def name_hash(cert, algorithm):
    h = hashes.Hash(algorithm)
    h.update(cert.subject.public_bytes())
    return h.finalize()


def verify_signature(pubkey, signature, data, hash_alg, what):
    try:
        if isinstance(pubkey, ec.EllipticCurvePublicKey):
            pubkey.verify(signature, data, ec.ECDSA(hash_alg))
        elif isinstance(pubkey, rsa.RSAPublicKey):
            pubkey.verify(signature, data, padding.PKCS1v15(), hash_alg)
        elif isinstance(pubkey, ed25519.Ed25519PublicKey):
            pubkey.verify(signature, data)
        else:
            raise Fail(f"{what}: unsupported key type {type(pubkey).__name__}")
    except InvalidSignature:
        raise Fail(f"{what}: signature does not verify")


def names_signer(resp, cert):
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == key_hash(cert)
    return resp.responder_name == cert.subject


def check_signature(resp, issuer):
    certs = list(resp.certificates)
    # The signer is the included certificate the ResponderID names; with no match (or
    # no certs) it must be the issuer itself. An included copy of the issuer
    # certificate (as `openssl ocsp` sends) counts as signed directly by the issuer.
    signer = next((c for c in certs if names_signer(resp, c)), None)
    issuer_spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if signer is not None and signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != issuer_spki:
        who = f"delegated responder '{signer.subject.rfc4514_string()}'"
        try:
            signer.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise Fail(f"{who} is not issued by the issuer: {str(e) or type(e).__name__}")
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise Fail(f"{who} has no extendedKeyUsage (needs id-kp-OCSPSigning)")
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise Fail(f"{who} lacks id-kp-OCSPSigning")
    else:
        if certs and signer is None:
            raise Fail(f"the ResponderID names none of the {len(certs)} included certificate(s)")
        signer = issuer
        who = "issuer" + (" (its certificate included)" if certs else "")
        if not names_signer(resp, issuer):
            raise Fail("the ResponderID does not name the issuer and no delegated responder is included")
    try:
        sig_hash = resp.signature_hash_algorithm
    except Exception as e:  # unsupported algorithm
        raise Fail(f"unsupported signature algorithm {resp.signature_algorithm_oid}: {e}")
    verify_signature(
        signer.public_key(), resp.signature, resp.tbs_response_bytes, sig_hash, f"response signed by {who}"
    )
    if resp.responder_key_hash is not None:
        rid = f"byKey {resp.responder_key_hash.hex()}"
    else:
        rid = f"byName {resp.responder_name.rfc4514_string()}"
    print(f"signature: ok ({resp.signature_algorithm_oid._name}, signed by {who}, responderID {rid})")


def check_certid(single, issuer, idx):
    alg = single.hash_algorithm
    if single.issuer_name_hash != name_hash(issuer, alg):
        raise Fail(f"response[{idx}] issuerNameHash ({alg.name}) does not match the issuer")
    if single.issuer_key_hash != key_hash(issuer, alg):
        raise Fail(f"response[{idx}] issuerKeyHash ({alg.name}) does not match the issuer")


NONCE_OID = bytes.fromhex("2b0601050507300102")  # 1.3.6.1.5.5.7.48.1.2, DER contents
EXTENDED_REVOKE_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.9")


def der_items(buf, what):
    """The TLVs of `buf` as (tag, whole encoding, contents). Single-octet tags, definite
    lengths: all OCSP needs. Deliberately tiny and independent of every library involved."""
    items, i = [], 0
    while i < len(buf):
        if i + 2 > len(buf):
            raise Fail(f"{what}: truncated DER")
        tag = buf[i]
        length, j = _der_len(buf, i + 1)
        if j + length > len(buf):
            raise Fail(f"{what}: DER length runs past the end")
        items.append((tag, buf[i : j + length], buf[j : j + length]))
        i = j + length
    return items


def der_one(buf, tag, what):
    items = der_items(buf, what)
    if len(items) != 1 or items[0][0] != tag:
        raise Fail(f"{what}: expected one element with tag {tag:#04x}")
    return items[0]


def nonce_value(extensions_contents, what):
    """extnValue bytes of the nonce in a SEQUENCE OF Extension's contents, or None."""
    for tag, _, ext in der_items(extensions_contents, what):
        parts = der_items(ext, what)
        if tag == 0x30 and parts and parts[0][0] == 0x06 and parts[0][2] == NONCE_OID:
            return parts[-1][2]
    return None


def request_parts(der):
    """(CertID encodings in order, nonce extnValue or None) of a DER OCSPRequest."""
    _, _, ocsp_request = der_one(der, 0x30, "request")
    tbs = der_items(ocsp_request, "request")[0]
    if tbs[0] != 0x30:
        raise Fail("request: no TBSRequest")
    cert_ids, nonce = [], None
    for tag, _, contents in der_items(tbs[2], "TBSRequest"):
        if tag == 0x30:  # requestList
            for rtag, _, request in der_items(contents, "requestList"):
                cert_id = der_items(request, "Request")[0]
                if rtag != 0x30 or cert_id[0] != 0x30:
                    raise Fail("request: malformed Request")
                cert_ids.append(cert_id[1])
        elif tag == 0xA2:  # requestExtensions
            nonce = nonce_value(der_one(contents, 0x30, "requestExtensions")[2], "requestExtensions")
    if not cert_ids:
        raise Fail("request: no CertID")
    return cert_ids, nonce


def response_parts(der):
    """(certID encodings of the SingleResponses in order, nonce extnValue or None) of a
    successful DER OCSPResponse."""
    _, _, ocsp_response = der_one(der, 0x30, "response")
    items = der_items(ocsp_response, "response")
    if len(items) < 2 or items[1][0] != 0xA0:
        raise Fail("response: no responseBytes")
    response_bytes = der_one(items[1][2], 0x30, "responseBytes")[2]
    basic = der_items(response_bytes, "ResponseBytes")[1][2]  # the OCTET STRING's contents
    tbs = der_items(der_one(basic, 0x30, "BasicOCSPResponse")[2], "BasicOCSPResponse")[0][2]
    cert_ids, nonce = [], None
    for tag, _, contents in der_items(tbs, "ResponseData"):
        if tag == 0x30:  # responses
            for _, _, single in der_items(contents, "responses"):
                cert_ids.append(der_items(single, "SingleResponse")[0][1])
        elif tag == 0xA1:  # responseExtensions
            nonce = nonce_value(der_one(contents, 0x30, "responseExtensions")[2], "responseExtensions")
    return cert_ids, nonce


def check_request_echo(der, req_path, expect_nonce):
    with open(req_path, "rb") as f:
        req_ids, req_nonce = request_parts(f.read())
    resp_ids, resp_nonce = response_parts(der)
    if len(resp_ids) != len(req_ids):
        raise Fail(f"the request has {len(req_ids)} CertID(s), the response {len(resp_ids)} SingleResponse(s)")
    for i, cert_id in enumerate(req_ids):
        if cert_id not in resp_ids:
            raise Fail(f"the request's CertID #{i} ({cert_id.hex()}) is not echoed byte for byte")
    if sorted(resp_ids) != sorted(req_ids):
        raise Fail("a SingleResponse answers a CertID the request did not ask about")
    if resp_nonce is not None and req_nonce is None:
        raise Fail("the response carries a nonce, the request has none")
    if resp_nonce is not None and resp_nonce != req_nonce:
        raise Fail(f"the response nonce {resp_nonce.hex()} differs from the request nonce {req_nonce.hex()}")
    if expect_nonce and resp_nonce is None:
        raise Fail("the request's nonce is not echoed" if req_nonce is not None else "--expect-nonce: the request has no nonce")
    echoed = "echoed" if resp_nonce is not None else ("not echoed" if req_nonce is not None else "none asked")
    print(f"request: {len(req_ids)} CertID(s) echoed byte for byte; nonce {echoed}")


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def check_extended_revoke(resp, singles):
    try:
        ext = resp.extensions.get_extension_for_oid(EXTENDED_REVOKE_OID)
    except x509.ExtensionNotFound:
        raise Fail("no id-pkix-ocsp-extended-revoke response extension")
    if ext.critical:
        raise Fail("id-pkix-ocsp-extended-revoke is marked critical (RFC 6960 4.4.8: MUST NOT)")
    value = getattr(ext.value, "value", None)
    if value != b"\x05\x00":
        raise Fail(f"id-pkix-ocsp-extended-revoke value is {value!r}, expected NULL")
    for i, s in enumerate(singles):
        if s.certificate_status != ocsp.OCSPCertStatus.REVOKED:
            raise Fail(f"response[{i}] is not revoked")
        if utc(s, "revocation_time") != EPOCH:
            raise Fail(f"response[{i}] revocationTime {utc(s, 'revocation_time')} is not 1970-01-01T00:00:00Z")
        if s.revocation_reason != x509.ReasonFlags.certificate_hold:
            raise Fail(f"response[{i}] reason {s.revocation_reason} is not certificateHold")
    print("extended revoke: epoch, certificateHold, non-critical NULL extension")


def http_date(value):
    return email.utils.format_datetime(value.astimezone(datetime.timezone.utc), usegmt=True)


def read_headers(path):
    headers = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
    return headers


def check_headers(args, der, resp, singles):
    headers = read_headers(args.headers)
    if headers.get("content-type") != "application/ocsp-response":
        raise Fail(f"Content-Type is {headers.get('content-type')!r}")
    cache_control = headers.get("cache-control")
    expect = args.expect_cache or ("public" if singles else "no-cache")
    if expect == "no-cache":
        if cache_control != "max-age=0, no-cache":
            raise Fail(f"Cache-Control is {cache_control!r}, expected 'max-age=0, no-cache'")
    elif expect == "no-store":
        if cache_control != "no-store":
            raise Fail(f"Cache-Control is {cache_control!r}, expected 'no-store'")
    else:
        if not singles:
            raise Fail("an error response cannot be cacheable")
        etag = '"' + hashlib.sha256(der).hexdigest() + '"'
        if headers.get("etag") != etag:
            raise Fail(f"ETag is {headers.get('etag')!r}, expected the hex SHA-256 of the DER {etag}")
        this_u, next_u = utc(singles[0], "this_update"), utc(singles[0], "next_update")
        if headers.get("last-modified") != http_date(this_u):
            raise Fail(f"Last-Modified is {headers.get('last-modified')!r}, thisUpdate is {http_date(this_u)}")
        if headers.get("expires") != http_date(next_u):
            raise Fail(f"Expires is {headers.get('expires')!r}, nextUpdate is {http_date(next_u)}")
        parts = (cache_control or "").split(", ")
        if len(parts) != 4 or not parts[0].startswith("max-age=") or parts[1:] != ["public", "no-transform", "must-revalidate"]:
            raise Fail(f"Cache-Control is {cache_control!r}, expected 'max-age=N, public, no-transform, must-revalidate'")
        try:
            max_age = int(parts[0][len("max-age="):])
        except ValueError:
            raise Fail(f"Cache-Control max-age is not a number: {cache_control!r}")
        # The server computed N at its own 'now', at most CLOCK_SKEW before ours.
        now = datetime.datetime.now(datetime.timezone.utc)
        deadline = next_u
        if args.refresh_after is not None:
            deadline = min(deadline, this_u + datetime.timedelta(seconds=args.refresh_after))
        def limit(at):
            seconds = int((deadline - at).total_seconds())
            if args.max_age_cap is not None:
                seconds = min(seconds, args.max_age_cap)
            return seconds
        highest = limit(now - CLOCK_SKEW)
        if max_age < 0 or max_age > highest:
            what = "nextUpdate" + (", the refresh deadline" if args.refresh_after is not None else "")
            what += ", the cap" if args.max_age_cap is not None else ""
            raise Fail(f"max-age={max_age} reaches past {what} (at most {highest})")
        if args.refresh_after is not None and max_age < limit(now) - 1:
            raise Fail(f"max-age={max_age} is shorter than the caching rules allow ({limit(now)})")
    print(f"headers: ok (Cache-Control: {cache_control})")


def lint(path):
    try:
        from pkilint import loader, pkix, report
        from pkilint.pkix import extension, name, ocsp as pk_ocsp
    except ImportError as e:
        raise Fail(f"--lint needs pkilint ({e}); pip install pkilint")
    validator = pk_ocsp.create_pkix_ocsp_response_validator_container(
        [
            pk_ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )
    with open(path, "rb") as f:
        try:
            doc = loader.load_der_ocsp_response(f.read(), path)
        except Exception as e:
            raise Fail(f"pkilint cannot load the response: {e}")
    results = validator.validate(doc.root)
    findings = []
    for result in results:
        for fd in result.finding_descriptions:
            msg = f" ({fd.message})" if fd.message else ""
            findings.append(f"{fd.finding.severity.name} {fd.finding.code} at {result.node.path}{msg}")
    if findings:
        for line in findings:
            print(f"lint: {line}")
        raise Fail(f"pkilint reported {len(findings)} finding(s): {findings[0]}")
    print("lint: no findings")


def judge(args):
    with open(args.response, "rb") as f:
        der = f.read()
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        if args.lint:
            try:
                lint(args.response)  # print pkilint's view of what is wrong first
            except Fail as lint_fail:
                print(f"lint: {lint_fail}")
        raise Fail(f"not a DER OCSPResponse: {e}")
    status = STATUS_NAMES.get(resp.response_status, str(resp.response_status))
    print(f"responseStatus: {status}")
    if resp.response_status != STATUSES[args.expect_status]:
        raise Fail(f"responseStatus is {status}, expected {args.expect_status}")
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        # An error response is just the status: no responseBytes.
        if args.lint:
            lint(args.response)
        if len(der) > 5:
            raise Fail(f"{status} response carries {len(der)} bytes; expected a bare status (5 bytes)")
        if args.headers:
            check_headers(args, der, resp, [])
        return
    issuer = load_cert(args.issuer) if args.issuer else None
    singles = list(resp.responses)
    if not singles:
        raise Fail("successful response without any SingleResponse")
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"producedAt: {utc(resp, 'produced_at').isoformat()}")
    for i, s in enumerate(singles):
        cs = CERT_STATUS_NAMES[s.certificate_status]
        this_u, next_u = utc(s, "this_update"), utc(s, "next_update")
        extra = ""
        if s.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            reason = s.revocation_reason.name if s.revocation_reason else "none"
            extra = f" revoked_at={utc(s, 'revocation_time').isoformat()} reason={reason}"
        print(
            f"response[{i}]: serial={s.serial_number:x} status={cs} certid_hash={s.hash_algorithm.name}"
            f" this_update={this_u.isoformat()} next_update={next_u.isoformat() if next_u else 'none'}{extra}"
        )
        if next_u is None:
            raise Fail(f"response[{i}] has no nextUpdate")
        if next_u <= this_u:
            raise Fail(f"response[{i}] nextUpdate {next_u} is not after thisUpdate {this_u}")
        if not args.no_time_check:
            if this_u > now + CLOCK_SKEW:
                raise Fail(f"response[{i}] thisUpdate {this_u} is in the future")
            if next_u < now:
                raise Fail(f"response[{i}] is expired (nextUpdate {next_u})")
        if args.expect_cert_status and s.certificate_status != CERT_STATUSES[args.expect_cert_status]:
            raise Fail(f"response[{i}] (serial {s.serial_number:x}) is {cs}, expected {args.expect_cert_status}")
        if args.validity is not None and (next_u - this_u).total_seconds() != args.validity:
            raise Fail(f"response[{i}] validity is {next_u - this_u}, expected {args.validity} s")
        if s.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            reason = s.revocation_reason.name if s.revocation_reason else "none"
            if args.expect_reason and reason != REASONS.get(args.expect_reason, args.expect_reason):
                raise Fail(f"response[{i}] revocationReason is {reason}, expected {args.expect_reason}")
            at = utc(s, "revocation_time")
            if args.expect_revocation_time and at != parse_time(args.expect_revocation_time):
                raise Fail(f"response[{i}] revocationTime is {at.isoformat()}, expected {args.expect_revocation_time}")
            if at > this_u:
                raise Fail(f"response[{i}] revocationTime {at} is after thisUpdate {this_u}")
        if this_u > utc(resp, "produced_at") or utc(resp, "produced_at") >= next_u:
            raise Fail(f"response[{i}]: not thisUpdate <= producedAt < nextUpdate")
        if issuer is not None:
            check_certid(s, issuer, i)
    if args.expect_extended_revoke:
        check_extended_revoke(resp, singles)
    if args.lint:
        lint(args.response)
    if issuer is not None:
        check_signature(resp, issuer)
    if args.request:
        check_request_echo(der, args.request, args.expect_nonce)
    elif args.expect_nonce:
        raise Fail("--expect-nonce needs --request")
    if args.headers:
        check_headers(args, der, resp, singles)


def main(argv=None):
    p = argparse.ArgumentParser(description="External judge for OCSP responses (see module docstring).")
    p.add_argument("response", help="DER OCSPResponse file")
    p.add_argument("--issuer", help="issuer certificate (PEM or DER): verify CertIDs and the signature")
    p.add_argument("--request", help="DER OCSPRequest the response answers: check the CertID echo")
    p.add_argument("--expect-status", choices=list(STATUSES), default="successful")
    p.add_argument("--expect-cert-status", choices=list(CERT_STATUSES))
    p.add_argument("--expect-nonce", action="store_true", help="the request's nonce must be echoed (needs --request)")
    p.add_argument("--expect-extended-revoke", action="store_true", help="the RFC 6960 'revoked' for an unissued serial")
    p.add_argument("--expect-reason", help="revocationReason of revoked answers (RFC 5280 name; none = omitted)")
    p.add_argument("--expect-revocation-time", help="revocationTime of revoked answers (RFC 3339)")
    p.add_argument("--validity", type=int, help="nextUpdate - thisUpdate in seconds")
    p.add_argument("--headers", help="HTTP response headers, one 'Name: value' per line")
    p.add_argument("--expect-cache", choices=["public", "no-cache", "no-store"], help="with --headers")
    p.add_argument("--max-age-cap", type=int, help="with --headers: max-age never above SECS")
    p.add_argument("--refresh-after", type=int, help="with --headers: max-age never past thisUpdate + SECS")
    p.add_argument("--lint", action="store_true", help="run pkilint; any finding fails")
    p.add_argument("--no-time-check", action="store_true", help="skip thisUpdate/nextUpdate vs. now checks")
    args = p.parse_args(argv)
    try:
        judge(args)
    except Fail as e:
        print(f"FAIL: {e}")
        return 1
    except OSError as e:
        print(f"FAIL: {e}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
