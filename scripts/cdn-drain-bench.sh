#!/usr/bin/env bash
# scripts/cdn-drain-bench.sh — how fast owed CDN purges drain (docs/benchmarks.md).
#
# Inserts ROWS owed purges (cdn_purges rows of an issuer named "cdn-bench", as a mass
# revocation leaves them), starts one `jitocsp serve` whose purge_url is a local stand-in
# CDN API (it refuses every REFUSE_EVERY-th call with 503 and counts calls, tags, and tags
# taken twice), and reports how long the responder took to deliver all of them, the calls
# made, and the responder's metrics.
#
#   scripts/cdn-drain-bench.sh [--rows N] [--urls K] [--max-batch B] [--rate R]
#                              [--refuse-every F] [--limit SECONDS] [--binary PATH] [--old]
#
#   --urls K       GET URLs per purge (0 = tags only; with cdn.base_url set there are 2 to 4)
#   --rate R       cdn.max_calls_per_second
#   --old          the binary predates cdn.max_batch / max_calls_per_second (leave them out)
#
# DATABASE_URL and REDIS_URL name the services. The responder delivers EVERY owed purge of the
# database to the stand-in, so the database must be one of its own: the script refuses to
# run if it holds purges of other issuers. Needs psql, python3, curl, openssl.
set -euo pipefail

rows=1000000 urls=0 batch=100 rate=1000 refuse=50 limit=3600 old=0
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/jitocsp
while [ $# -gt 0 ]; do
    case $1 in
    --rows) rows=$2; shift 2 ;;
    --urls) urls=$2; shift 2 ;;
    --max-batch) batch=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --refuse-every) refuse=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --binary) bin=$2; shift 2 ;;
    --old) old=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
: "${DATABASE_URL:?set DATABASE_URL to a database of its own}" "${REDIS_URL:?set REDIS_URL}"
work=$(mktemp -d /tmp/cdn-drain-bench.XXXXXX)
q() { psql -X -q -tA -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

"$bin" migrate >/dev/null
if [ -z "$(q "SELECT id FROM issuers WHERE name = 'cdn-bench'")" ]; then
    bash "$root/scripts/mkpki.sh" "$work/pki" >/dev/null
    chmod 600 "$work/pki/ca.key"
    "$bin" admin issuer add --name cdn-bench --cert "$work/pki/ca.pem" --signer "file:$work/pki/ca.key" >/dev/null 2>&1
fi
others=$(q "SELECT count(*) FROM cdn_purges p JOIN issuers i ON i.id = p.issuer_id WHERE i.name <> 'cdn-bench'")
[ "$others" = 0 ] || { echo "refusing: the database owes $others purges of other issuers" >&2; exit 1; }

q "DELETE FROM cdn_purges"
# Each URL about 110 characters, the size of a real GET URL (base64 of an OCSP request).
url_list="'{}'::text[]"
[ "$urls" -gt 0 ] && url_list="ARRAY(SELECT 'http://ocsp.example.test/' || repeat(md5(g::text || u::text), 3)
                                      FROM generate_series(1, $urls) u)"
q "INSERT INTO cdn_purges (issuer_id, serial, tag, urls, action)
   SELECT i.id, decode(to_hex(g + 268435456), 'hex'), 'cdn-bench:' || to_hex(g + 268435456), $url_list, 'revoke'
   FROM issuers i, generate_series(1, $rows) g WHERE i.name = 'cdn-bench'"
q "VACUUM ANALYZE cdn_purges"

cat > "$work/sink.py" <<'PY'
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
refuse_every, out = int(sys.argv[1]), sys.argv[2]
lock, seen, arrivals = threading.Lock(), set(), []
tally = {"calls": 0, "refused": 0, "tags_taken": 0, "taken_twice": 0}
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *_): pass
    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        tags = doc["tags"] if "tags" in doc else [doc["tag"]]  # batches, or one purge per call (--old)
        with lock:
            tally["calls"] += 1
            arrivals.append(time.monotonic())
            refuse = refuse_every and tally["calls"] % refuse_every == 0
            if refuse:
                tally["refused"] += 1
            else:
                for tag in tags:
                    tally["taken_twice"] += tag in seen
                    seen.add(tag)
                tally["tags_taken"] += len(tags)
        self.send_response(503 if refuse else 200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
def report():
    while True:
        time.sleep(1)
        with lock:
            t = dict(tally, distinct_tags=len(seen))
            first, most = 0, 0  # the most arrivals within any one second
            for i, at in enumerate(arrivals):
                while at - arrivals[first] >= 1.0:
                    first += 1
                most = max(most, i - first + 1)
            t["most_calls_in_one_second"] = most
            t["first_to_last_call_s"] = round(arrivals[-1] - arrivals[0], 1) if arrivals else 0
        with open(out + ".tmp", "w") as f:
            json.dump(t, f)
        os.replace(out + ".tmp", out)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
threading.Thread(target=report, daemon=True).start()
server.serve_forever()
PY
python3 "$work/sink.py" "$refuse" "$work/sink.json" > "$work/sink.port" &
sink=$!
trap 'kill $sink ${serve:-} 2>/dev/null || true' EXIT
while [ ! -s "$work/sink.port" ]; do sleep 0.1; done

{
    echo "[cdn]"
    echo "purge_url = \"http://127.0.0.1:$(cat "$work/sink.port")/purge\""
    [ "$old" = 1 ] || printf 'max_batch = %s\nmax_calls_per_second = %s\n' "$batch" "$rate"
} > "$work/jitocsp.toml"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
metrics=127.0.0.1:$(free_port)
started=$(date +%s.%N)
"$bin" --config "$work/jitocsp.toml" serve --listen "127.0.0.1:$(free_port)" --metrics-listen "$metrics" 2> "$work/serve.log" &
serve=$!
left=$rows
while [ "$left" != 0 ]; do
    sleep 2
    left=$(q "SELECT count(*) FROM cdn_purges")
    if [ "$(echo "$(date +%s.%N) - $started > $limit" | bc)" = 1 ]; then
        echo "time limit: $left purges still owed"
        break
    fi
done
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
sleep 1.5 # the sink's last tally
echo "rows=$rows urls_per_row=$urls max_batch=$batch rate=$rate refuse_every=$refuse binary=$bin"
echo "drained_in_s=$elapsed owed_left=$left"
echo "stand-in CDN: $(cat "$work/sink.json")"
curl -s "http://$metrics/metrics" | grep -E '^jitocsp_cdn_purge' | grep -v _bucket
echo "(responder log: $work/serve.log)"
