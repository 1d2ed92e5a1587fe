#!/usr/bin/env python3
"""judge.py - external judge for OCSP responses produced by jitocsp.

Independent of the Rust code on purpose: it parses with Python `cryptography` and
lints with `pkilint`, so a bug shared by our encoder and our decoder cannot pass.

Usage:
  judge.py RESPONSE.der [--issuer ISSUER.pem] [--request REQUEST.der]
           [--expect-status successful|malformedRequest|unauthorized|tryLater|internalError|sigRequired]
           [--expect-cert-status good|revoked|unknown] [--lint] [--no-time-check]

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
  * --request: every CertID of the (single-CertID) request is echoed exactly (same hash
    algorithm, hashes and serial); a nonce in the request, if echoed, is echoed exactly
  * --lint: pkilint's RFC 6960 OCSP response linter (what `lint_ocsp_response lint FILE`
    runs); ANY finding of any severity (including INFO and NOTICE) is a failure
Exit status: 0 all checks passed, 1 a check failed (last line `FAIL: reason`), 2 bad usage.
Needs: pip install cryptography pkilint (scripts/test.sh installs them).
"""

import argparse
import datetime
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


def check_request_echo(resp, req_path, singles):
    with open(req_path, "rb") as f:
        try:
            req = ocsp.load_der_ocsp_request(f.read())
        except ValueError as e:
            raise Fail(f"cannot parse request {req_path}: {e}")
    match = [
        s
        for s in singles
        if s.serial_number == req.serial_number
        and s.hash_algorithm.name == req.hash_algorithm.name
        and s.issuer_name_hash == req.issuer_name_hash
        and s.issuer_key_hash == req.issuer_key_hash
    ]
    if not match:
        raise Fail(
            f"the request's CertID ({req.hash_algorithm.name}, serial {req.serial_number:x}) is not echoed exactly"
        )
    try:
        req_nonce = req.extensions.get_extension_for_oid(OCSPExtensionOID.NONCE).value.nonce
    except x509.ExtensionNotFound:
        req_nonce = None
    try:
        resp_nonce = resp.extensions.get_extension_for_oid(OCSPExtensionOID.NONCE).value.nonce
    except x509.ExtensionNotFound:
        resp_nonce = None
    if resp_nonce is not None and resp_nonce != req_nonce:
        raise Fail("the response nonce differs from the request nonce")
    print(f"request: CertID echoed; nonce {'echoed' if resp_nonce is not None else 'not echoed'}")


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
        if issuer is not None:
            check_certid(s, issuer, i)
    if args.lint:
        lint(args.response)
    if issuer is not None:
        check_signature(resp, issuer)
    if args.request:
        check_request_echo(resp, args.request, singles)


def main(argv=None):
    p = argparse.ArgumentParser(description="External judge for OCSP responses (see module docstring).")
    p.add_argument("response", help="DER OCSPResponse file")
    p.add_argument("--issuer", help="issuer certificate (PEM or DER): verify CertIDs and the signature")
    p.add_argument("--request", help="DER OCSPRequest the response answers: check the CertID echo")
    p.add_argument("--expect-status", choices=list(STATUSES), default="successful")
    p.add_argument("--expect-cert-status", choices=list(CERT_STATUSES))
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
