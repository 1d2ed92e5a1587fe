#!/usr/bin/env python3
"""GET a list of OCSP paths from one server and check every answer, for scripts/bench.sh.

  fetch.py --url http://127.0.0.1:PORT --paths FILE            warm a cache: one GET per path
  fetch.py --url ... --sample FILE --out DIR [--close]          save each body as DIR/SERIAL.der

Every response must be HTTP 200 with Content-Type application/ocsp-response and a body that
starts like a successful OCSPResponse (SEQUENCE { ENUMERATED 0 ... }); anything else fails.
Prints "ok N requests, body B bytes, head H bytes" where B and H are the median body size and
the median size of the status line plus headers as they came over the wire (so the caller
can tell wrk's average bytes per response from what a correct answer weighs).
"""

import argparse
import http.client
import os
import statistics
import sys
import urllib.parse


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--paths", help="file of paths, one per line")
    ap.add_argument("--sample", help="file of 'SERIALHEX PATH' lines")
    ap.add_argument("--out", help="directory for the sample's bodies (SERIALHEX.der)")
    ap.add_argument("--close", action="store_true", help="one connection per request (Connection: close)")
    args = ap.parse_args()

    u = urllib.parse.urlsplit(args.url)
    jobs = []
    if args.paths:
        with open(args.paths) as f:
            jobs += [(None, line.strip()) for line in f if line.strip()]
    if args.sample:
        with open(args.sample) as f:
            for line in f:
                if line.strip():
                    serial, path = line.split()
                    jobs.append((serial, path))
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    conn = None
    bodies, heads = [], []
    for serial, path in jobs:
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            try:
                headers = {"Connection": "close"} if args.close else {}
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                conn.close()
                conn = None
                if attempt == 2:
                    print(f"fetch: GET {args.url}{path}: {e}", file=sys.stderr)
                    return 1
        ctype = resp.getheader("Content-Type", "")
        if resp.status != 200 or ctype.lower() != "application/ocsp-response":
            print(f"fetch: GET {args.url}{path}: HTTP {resp.status} {ctype!r}: {body[:200]!r}", file=sys.stderr)
            return 1
        # OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (0 = successful), responseBytes [0] }
        if len(body) < 8 or body[0] != 0x30 or b"\x0a\x01\x00" not in body[:8]:
            print(f"fetch: GET {args.url}{path}: not a successful OCSPResponse: {body[:40].hex()}", file=sys.stderr)
            return 1
        bodies.append(len(body))
        head = len(f"HTTP/1.{1 if resp.version == 11 else 0} {resp.status} {resp.reason}\r\n") + 2
        head += sum(len(k) + len(v) + 4 for k, v in resp.getheaders())
        heads.append(head)
        if serial and args.out:
            with open(os.path.join(args.out, serial + ".der"), "wb") as f:
                f.write(body)
        if args.close or resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    if not bodies:
        print("fetch: nothing fetched", file=sys.stderr)
        return 1
    print(f"ok {len(bodies)} requests, body {int(statistics.median(bodies))} bytes, head {int(statistics.median(heads))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
