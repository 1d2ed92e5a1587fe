#!/usr/bin/env python3
"""Self-test of judge.py against reference responses made by `openssl ocsp` (no server).

Builds a PKI with scripts/mkpki.sh for each key type, signs responses with the
openssl reference responder (issuer-signed and delegated), and checks that the judge
accepts correct responses and rejects wrong expectations, a wrong issuer, a
corrupted signature and a lint finding. Run by scripts/test.sh; exits non-zero on
the first surprise.
"""

import os
import subprocess
import sys
import tempfile

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


def ocsp_resp(d, out, serial_name, *extra, signer="ca"):
    serials = dict(line.split() for line in open(os.path.join(d, "serials.txt")))
    cmd = [
        "openssl", "ocsp", "-index", "index.txt", "-CA", "ca.pem", "-issuer", "ca.pem",
        "-rsigner", f"{signer}.pem", "-rkey", f"{signer}.key", "-ndays", "4",
        *extra, "-serial", "0x" + serials[serial_name], "-respout", out, "-reqout", out + ".req",
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
            # corrupt one signature byte
            from cryptography.x509 import ocsp

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
        try:
            from pyasn1.codec.der import decoder, encoder
            from pyasn1_alt_modules import rfc6960
        except ImportError:
            print("selftest: pyasn1 not available, skipping the lint-finding case")
        else:
            src = os.path.join(tmp, "ec256", "deleg.der")
            resp, _ = decoder.decode(open(src, "rb").read(), asn1Spec=rfc6960.OCSPResponse())
            basic, _ = decoder.decode(bytes(resp["responseBytes"]["response"]), asn1Spec=rfc6960.BasicOCSPResponse())
            rid = basic["tbsResponseData"]["responderID"]
            rid["byKey"] = rid["byKey"].clone(b"\x11" * 32)
            resp["responseBytes"]["response"] = encoder.encode(basic)
            linted = os.path.join(tmp, "keyhash256.der")
            open(linted, "wb").write(encoder.encode(resp))
            expect(True, [linted], "keyhash256 without --lint")
            expect(False, [linted, "--lint"], "keyhash256 with --lint")
    print("selftest: judge OK")


if __name__ == "__main__":
    main()
