#!/usr/bin/env python3
"""Self-test of judge.py against reference responses made by `openssl ocsp` (no server).

Builds a PKI with scripts/mkpki.sh for each key type, signs responses with the
openssl reference responder (issuer-signed and delegated), and checks that the judge
accepts correct responses and rejects wrong expectations, a wrong issuer, a
corrupted signature and a lint finding. Run by scripts/test.sh; exits non-zero on
the first surprise.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import time

# pyasn1 comes with pkilint, which the judge needs anyway: without it the self-test cannot
# make its wrong responses, and a self-test that skips cases proves nothing.
try:
    from cryptography.x509 import ocsp
    from pyasn1.codec.der import decoder, encoder
    from pyasn1.type import univ
    from pyasn1_alt_modules import rfc6960
except ImportError as e:
    print(f"selftest: FAIL: {e} (pip install pkilint cryptography; scripts/test.sh does)")
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
JUDGE = os.path.join(HERE, "judge.py")
MKPKI = os.path.join(ROOT, "scripts", "mkpki.sh")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def judge(*args):
    return run([sys.executable, JUDGE, *args])


def expect(ok, args, label):
    r = judge(*args)
    if (r.returncode == 0) != ok:
        print(f"selftest: {label}: expected {'PASS' if ok else 'FAIL'}, judge said:\n{r.stdout}{r.stderr}")
        sys.exit(1)
    last = (r.stdout.strip().splitlines() or ["<no output>"])[-1]
    print(f"selftest: {label}: {last}")


def ocsp_resp(d, out, serial_names, *extra, signer="ca"):
    serials = dict(line.split() for line in open(os.path.join(d, "serials.txt")))
    if isinstance(serial_names, str):
        serial_names = [serial_names]
    asked = [arg for name in serial_names for arg in ("-serial", "0x" + serials[name])]
    cmd = [
        "openssl", "ocsp", "-index", "index.txt", "-CA", "ca.pem", "-issuer", "ca.pem",
        "-rsigner", f"{signer}.pem", "-rkey", f"{signer}.key", "-ndays", "4",
        *extra, *asked, "-respout", out, "-reqout", out + ".req",
    ]
    r = run(cmd, cwd=d)
    if r.returncode != 0 or not os.path.exists(os.path.join(d, out)):
        print(f"selftest: openssl ocsp failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        sys.exit(1)
    return os.path.join(d, out)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for keytype in ("ec256", "ec384", "rsa2048"):
            d = os.path.join(tmp, keytype)
            r = run(["bash", MKPKI, d], env={**os.environ, "KEYTYPE": keytype})
            if r.returncode != 0:
                print(f"selftest: mkpki.sh failed:\n{r.stdout}{r.stderr}")
                sys.exit(1)
            ca = os.path.join(d, "ca.pem")
            good = ocsp_resp(d, "good.der", "good", "-resp_key_id", "-resp_no_certs")
            sha256 = ocsp_resp(d, "good256.der", "good", "-sha256", "-resp_key_id")
            revoked = ocsp_resp(d, "revoked.der", "revoked", "-resp_key_id", "-resp_no_certs")
            unknown = ocsp_resp(d, "unknown.der", "unissued", "-resp_key_id", "-resp_no_certs")
            deleg = ocsp_resp(d, "deleg.der", "good", "-resp_key_id", signer="responder")
            t = keytype
            expect(True, [good, "--issuer", ca, "--expect-cert-status", "good", "--lint", "--request", good + ".req"], f"{t} good")
            expect(True, [sha256, "--issuer", ca, "--request", sha256 + ".req", "--lint"], f"{t} sha256 CertID")
            expect(True, [revoked, "--issuer", ca, "--expect-cert-status", "revoked", "--lint"], f"{t} revoked")
            expect(True, [unknown, "--issuer", ca, "--expect-cert-status", "unknown", "--lint"], f"{t} unknown")
            expect(True, [deleg, "--issuer", ca, "--expect-cert-status", "good", "--lint"], f"{t} delegated")
            expect(False, [good, "--expect-cert-status", "revoked"], f"{t} wrong cert status")
            expect(False, [good, "--expect-status", "unauthorized"], f"{t} wrong response status")
            other = os.path.join(tmp, "ec256" if keytype != "ec256" else "ec384", "ca.pem")
            if os.path.exists(other):
                expect(False, [good, "--issuer", other], f"{t} wrong issuer")
            if keytype == "ec256":
                check_new_options(d, ca, good, sha256, revoked)
            # corrupt one signature byte
            data = bytearray(open(good, "rb").read())
            sig = ocsp.load_der_ocsp_response(bytes(data)).signature
            i = bytes(data).find(sig)
            data[i + len(sig) // 2] ^= 0xFF
            bad = os.path.join(d, "bad.der")
            open(bad, "wb").write(data)
            expect(False, [bad, "--issuer", ca], f"{t} corrupted signature")

        # error responses: bare status
        err = os.path.join(tmp, "unauthorized.der")
        open(err, "wb").write(bytes([0x30, 0x03, 0x0A, 0x01, 0x06]))
        expect(True, [err, "--expect-status", "unauthorized", "--lint"], "unauthorized error response")
        expect(False, [err], "unauthorized when successful expected")
        junk = os.path.join(tmp, "junk.der")
        open(junk, "wb").write(b"<html>nope</html>")
        expect(False, [junk, "--expect-status", "malformedRequest"], "HTML instead of OCSP")

        # a lint finding (ResponderID byKey with a 32-octet hash) must fail --lint
        src = os.path.join(tmp, "ec256", "deleg.der")
        resp, basic = decode(src)
        rid = basic["tbsResponseData"]["responderID"]
        rid["byKey"] = rid["byKey"].clone(b"\x11" * 32)
        linted = os.path.join(tmp, "keyhash256.der")
        encode(linted, resp, basic)
        expect(True, [linted], "keyhash256 without --lint")
        expect(False, [linted, "--lint"], "keyhash256 with --lint")
    print("selftest: judge OK")


def decode(path):
    """(OCSPResponse, BasicOCSPResponse) decoded with pyasn1, to make wrong responses."""
    resp, _ = decoder.decode(open(path, "rb").read(), asn1Spec=rfc6960.OCSPResponse())
    basic, _ = decoder.decode(bytes(resp["responseBytes"]["response"]), asn1Spec=rfc6960.BasicOCSPResponse())
    return resp, basic


def encode(path, resp, basic):
    resp["responseBytes"]["response"] = encoder.encode(basic)
    open(path, "wb").write(encoder.encode(resp))


def http_date(value):
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", value.utctimetuple())


def headers_file(path, fields):
    open(path, "w").write("".join(f"{k}: {v}\n" for k, v in fields.items()))
    return path


def check_new_options(d, ca, good, sha256, revoked):
    """The request echo, nonce, header, reason and extended-revoke checks, each shown to
    pass on a right response and to fail on a wrong one."""
    t = "ec256"
    # openssl sends a 16-octet nonce unless -no_nonce, and its responder echoes it.
    expect(True, [good, "--request", good + ".req", "--expect-nonce"], f"{t} nonce echoed")
    plain = ocsp_resp(d, "plain.der", "good", "-no_nonce", "-resp_key_id")
    expect(True, [plain, "--request", plain + ".req"], f"{t} no nonce asked, none sent")
    expect(False, [plain, "--request", plain + ".req", "--expect-nonce"], f"{t} --expect-nonce without a nonce")
    expect(False, [good, "--request", plain + ".req"], f"{t} nonce sent that was not asked")
    other = ocsp_resp(d, "other.der", "good", "-resp_key_id")
    expect(False, [good, "--request", other + ".req"], f"{t} nonce differs")
    expect(False, [good, "--request", sha256 + ".req"], f"{t} SHA-1 CertID answering a SHA-256 request")
    multi = ocsp_resp(d, "multi.der", ["good", "revoked"], "-no_nonce", "-resp_key_id")
    expect(True, [multi, "--issuer", ca, "--request", multi + ".req", "--lint"], f"{t} two CertIDs echoed")
    expect(False, [multi, "--request", plain + ".req"], f"{t} two answers to one CertID")
    expect(False, [plain, "--request", multi + ".req"], f"{t} one answer to two CertIDs")
    # The NULL parameters of the hash AlgorithmIdentifier dropped from the response's CertID
    # only: the same CertID to any library, not byte for byte.
    resp, basic = decode(plain)
    alg = basic["tbsResponseData"]["responses"][0]["certID"]["hashAlgorithm"]
    alg["parameters"] = univ.noValue
    absent = os.path.join(d, "absent.der")
    encode(absent, resp, basic)
    expect(False, [absent, "--request", plain + ".req"], f"{t} CertID with its NULL parameters dropped")

    expect(True, [revoked, "--expect-reason", "keyCompromise"], f"{t} reason")
    expect(False, [revoked, "--expect-reason", "superseded"], f"{t} wrong reason")
    expect(False, [revoked, "--expect-reason", "none"], f"{t} reason present, none expected")
    expect(False, [revoked, "--expect-revocation-time", "1970-01-01T00:00:00Z"], f"{t} wrong revocation time")
    expect(False, [good, "--validity", "3600"], f"{t} wrong validity")
    expect(False, [revoked, "--expect-extended-revoke"], f"{t} revoked without extended-revoke")
    # The RFC 6960 2.2 answer for a serial never issued, made from the revoked one.
    resp, basic = decode(revoked)
    info = basic["tbsResponseData"]["responses"][0]["certStatus"]["revoked"]
    info["revocationTime"] = info["revocationTime"].clone("19700101000000Z")
    info["revocationReason"] = info["revocationReason"].clone("certificateHold")
    exts = basic["tbsResponseData"]["responseExtensions"]
    ext = exts[0].clone()
    ext["extnID"] = rfc6960.id_pkix_ocsp_extended_revoke
    ext["critical"] = False
    ext["extnValue"] = univ.OctetString(b"\x05\x00")
    exts.append(ext)
    unissued = os.path.join(d, "unissued-revoked.der")
    encode(unissued, resp, basic)
    expect(True, [unissued, "--expect-extended-revoke"], f"{t} extended revoke")
    ext["critical"] = True
    encode(unissued, resp, basic)
    expect(False, [unissued, "--expect-extended-revoke"], f"{t} critical extended revoke")

    r = ocsp.load_der_ocsp_response(open(plain, "rb").read())
    der = open(plain, "rb").read()
    this_u, next_u = r.responses.__iter__().__next__().this_update_utc, r.next_update_utc
    max_age = int(next_u.timestamp() - time.time())
    right = {
        "Content-Type": "application/ocsp-response",
        "ETag": '"' + hashlib.sha256(der).hexdigest() + '"',
        "Last-Modified": http_date(this_u),
        "Expires": http_date(next_u),
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
    }
    h = os.path.join(d, "headers.txt")
    expect(True, [plain, "--headers", headers_file(h, right)], f"{t} headers")
    expect(True, [plain, "--headers", h, "--refresh-after", str(4 * 86400)], f"{t} headers at the refresh deadline")
    expect(False, [plain, "--headers", h, "--refresh-after", "3600"], f"{t} max-age past the refresh deadline")
    expect(False, [plain, "--headers", h, "--max-age-cap", "600"], f"{t} max-age above the cap")
    capped = dict(right, **{"Cache-Control": "max-age=600, public, no-transform, must-revalidate"})
    expect(True, [plain, "--headers", headers_file(h, capped), "--max-age-cap", "600"], f"{t} capped max-age")
    expect(False, [plain, "--headers", h, "--refresh-after", str(4 * 86400)], f"{t} max-age far short of the deadline")
    for name, value in [
        ("ETag", '"' + hashlib.sha256(b"other").hexdigest() + '"'),
        ("Last-Modified", http_date(next_u)),
        ("Expires", http_date(this_u)),
        ("Content-Type", "text/html"),
        ("Cache-Control", f"max-age={max_age + 3600}, public, no-transform, must-revalidate"),
        ("Cache-Control", f"max-age={max_age}, public"),
    ]:
        wrong = dict(right, **{name: value})
        expect(False, [plain, "--headers", headers_file(h, wrong)], f"{t} wrong {name}: {value}")
    no_store = {"Content-Type": "application/ocsp-response", "Cache-Control": "no-store"}
    expect(True, [good, "--headers", headers_file(h, no_store), "--expect-cache", "no-store"], f"{t} no-store")
    expect(False, [good, "--headers", h], f"{t} no-store where public is due")
    err = os.path.join(d, "tryLater.der")
    open(err, "wb").write(bytes([0x30, 0x03, 0x0A, 0x01, 0x03]))
    no_cache = {"Content-Type": "application/ocsp-response", "Cache-Control": "max-age=0, no-cache"}
    expect(True, [err, "--expect-status", "tryLater", "--headers", headers_file(h, no_cache)], f"{t} error headers")
    expect(False, [err, "--expect-status", "tryLater", "--headers", headers_file(h, right)], f"{t} cacheable error")


if __name__ == "__main__":
    main()
