#!/usr/bin/env python3
"""Generate OCSP GET request paths for arbitrary serials of one CA, fast, for scripts/bench.sh.

Each request is a DER OCSPRequest with one CertID (SHA-1, as RFC 9919 clients send it, or
SHA-256), no nonce, for serial = PREFIX (8 bytes) || COUNTER (8 bytes, big-endian). The
issuer name and key hashes come from the CA certificate, so no certificate file is needed
per serial. The DER is assembled from a fixed prefix plus the serial (every serial has the
same length), which is ~20x faster than building each request with `cryptography`; the
first few are cross-checked byte for byte against `cryptography`'s OCSPRequestBuilder.

Outputs (any subset), one line per serial, in order:
  --paths FILE    "/" + URL-encoded standard base64 of the DER request (an RFC 6960 GET path)
  --import FILE   "SERIALHEX,NOTAFTER" lines for `jitocsp admin import --issuer N -`
  --index FILE    OpenSSL CA index.txt "V" lines (for `openssl ocsp -index`)
  --sample FILE   "SERIALHEX PATH" for every STEP-th serial (--sample-step), for verification

  mkreqs.py --ca ca.pem --prefix 1a2b3c4d5e6f7081 --start 0 --count 1000000 --paths p.txt
"""

import argparse
import base64
import datetime
import hashlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + der_len(len(body)) + body


def spki_bit_string(spki_der: bytes) -> bytes:
    """Contents of subjectPublicKey (without the unused-bits octet) from a SubjectPublicKeyInfo."""

    def read(buf: bytes, pos: int):
        tag = buf[pos]
        n = buf[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[pos : pos + k], "big")
            pos += k
        return tag, buf[pos : pos + n], pos + n

    tag, body, _ = read(spki_der, 0)
    assert tag == 0x30, "SPKI is not a SEQUENCE"
    tag, _alg, pos = read(body, 0)
    assert tag == 0x30, "SPKI algorithm is not a SEQUENCE"
    tag, bits, _ = read(body, pos)
    assert tag == 0x03 and bits[0] == 0, "SPKI subjectPublicKey is not a whole-octet BIT STRING"
    return bits[1:]


HASHES = {
    "sha1": (hashlib.sha1, hashes.SHA1(), bytes.fromhex("06052b0e03021a")),
    "sha256": (hashlib.sha256, hashes.SHA256(), bytes.fromhex("0609608648016503040201")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ca", required=True, help="issuer CA certificate (PEM)")
    ap.add_argument("--prefix", required=True, help="8-byte serial prefix, 16 hex digits, first byte 10..7f")
    ap.add_argument("--start", type=int, default=0, help="first counter value")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--hash", choices=sorted(HASHES), default="sha1")
    ap.add_argument("--paths")
    ap.add_argument("--import", dest="import_file")
    ap.add_argument("--index")
    ap.add_argument("--sample")
    ap.add_argument("--sample-step", type=int, default=1000)
    ap.add_argument("--not-after-days", type=int, default=90)
    args = ap.parse_args()

    prefix = bytes.fromhex(args.prefix)
    if len(prefix) != 8 or not 0x10 <= prefix[0] <= 0x7F:
        ap.error("--prefix must be 16 hex digits with a first byte in 10..7f (positive, fixed length)")

    with open(args.ca, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    hfun, hobj, oid = HASHES[args.hash]
    name_hash = hfun(ca.subject.public_bytes()).digest()
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_hash = hfun(spki_bit_string(spki)).digest()

    # OCSPRequest { TBSRequest { requestList { Request { CertID } } } }; serial = 16 octets.
    alg = tlv(0x30, oid + b"\x05\x00")
    certid_head = alg + tlv(0x04, name_hash) + tlv(0x04, key_hash) + b"\x02\x10"
    certid_len = len(certid_head) + 16

    def wrap_heads(inner_len: int) -> bytes:
        # Request, requestList, TBSRequest, OCSPRequest: four nested SEQUENCE headers.
        heads = []
        n = inner_len
        for _ in range(4):
            heads.append(b"\x30" + der_len(n))
            n += len(heads[-1])
        return b"".join(reversed(heads))

    certid_hdr = b"\x30" + der_len(certid_len)
    head = wrap_heads(len(certid_hdr) + certid_len) + certid_hdr + certid_head

    def request_der(serial: bytes) -> bytes:
        return head + serial

    # Cross-check the template against cryptography's builder.
    for i in range(args.start, args.start + min(args.count, 3)):
        serial = prefix + i.to_bytes(8, "big")
        ref = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(name_hash, key_hash, int.from_bytes(serial, "big"), hobj)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        if ref != request_der(serial):
            print(f"mkreqs: template mismatch for serial {serial.hex()}", file=sys.stderr)
            return 1

    not_after = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=args.not_after_days)).replace(
        microsecond=0
    )
    not_after_rfc3339 = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    not_after_index = not_after.strftime("%y%m%d%H%M%SZ")

    outs = {}
    for key, path in (("paths", args.paths), ("import", args.import_file), ("index", args.index), ("sample", args.sample)):
        if path:
            outs[key] = open(path, "w", buffering=1 << 20)
    b64 = base64.b64encode
    trans = str.maketrans({"+": "%2B", "/": "%2F", "=": "%3D"})
    p_out = outs.get("paths")
    i_out = outs.get("import")
    x_out = outs.get("index")
    s_out = outs.get("sample")
    step = max(1, args.sample_step)
    for n, i in enumerate(range(args.start, args.start + args.count)):
        serial = prefix + i.to_bytes(8, "big")
        path = None
        if p_out or s_out:
            path = "/" + b64(request_der(serial)).decode().translate(trans)
        if p_out:
            p_out.write(path + "\n")
        hexs = serial.hex().upper()
        if i_out:
            i_out.write(f"{hexs},{not_after_rfc3339}\n")
        if x_out:
            # status, expiry, revocation date (empty), serial (as BN_bn2hex prints it), file, subject
            x_out.write(f"V\t{not_after_index}\t\t{hexs}\tunknown\t/CN=bench {hexs}\n")
        if s_out and n % step == 0:
            s_out.write(f"{hexs} {path}\n")
    for f in outs.values():
        f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
