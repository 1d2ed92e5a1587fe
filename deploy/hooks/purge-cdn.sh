#!/bin/sh
# jitocsp CDN purge hook (cdn.purge_command): purges one batch of certificates by tag.
#
#   [cdn]
#   purge_command = '/usr/local/lib/jitocsp/purge-cdn'
#
# jitocsp runs it once per batch with the batch JSON on stdin ({"tags": [...], "urls": [...],
# "purges": [...]}, at most cdn.max_batch tags and URLs; see docs/operations.md) and the
# number of certificates in JITOCSP_PURGE_COUNT. (The tags are also the arguments of
# `sh -c`; this script reads them from the JSON.) Exit status 0 means every purge of the
# batch is done; anything else, and jitocsp retries the whole batch later with backoff.
# Purges are idempotent, so a retried batch does no harm.
#
# Settings come from the environment (EnvironmentFile=/etc/jitocsp/env under systemd), never
# from the command line:
#   CDN=cloudflare  CLOUDFLARE_API_TOKEN, CLOUDFLARE_ZONE_ID  (purge by Cache-Tag; 100 tags a call)
#   CDN=fastly      FASTLY_API_TOKEN, FASTLY_SERVICE_ID      (Surrogate-Key; 256 keys a call)
#   CDN_API_BASE    overrides the API's base URL (a test double, a proxy)
# Cloudflare reads the Cache-Tag header jitocsp sends (comma-separated). For Fastly, copy it
# into Surrogate-Key at the edge, commas made spaces (VCL: set beresp.http.Surrogate-Key =
# regsuball(beresp.http.Cache-Tag, ",", " ");).
# To purge by URL instead, send the JSON's .urls (cdn.base_url must be set).
# Needs curl and jq.
set -eu

case "${CDN:-}" in
cloudflare)
    api="${CDN_API_BASE:-https://api.cloudflare.com/client/v4}/zones/${CLOUDFLARE_ZONE_ID:?}/purge_cache"
    auth="Authorization: Bearer ${CLOUDFLARE_API_TOKEN:?}"
    shape='{tags: .tags}'
    ;;
fastly)
    api="${CDN_API_BASE:-https://api.fastly.com}/service/${FASTLY_SERVICE_ID:?}/purge"
    auth="Fastly-Key: ${FASTLY_API_TOKEN:?}"
    shape='{surrogate_keys: .tags}'
    ;;
*)
    echo "purge-cdn: set CDN to cloudflare or fastly" >&2
    exit 2
    ;;
esac

# The API's request is made from the batch JSON on stdin. The credential header is read
# from a here-document (fd 3), not the command line, so the process list never shows it.
# -f: an HTTP error (429 included) fails the call. An empty Expect saves a round trip.
answer=$(jq -c "$shape" | curl -fsS --max-time 8 -X POST -H @/dev/fd/3 -H 'Expect:' \
    -H 'Content-Type: application/json' --data-binary @- "$api" 3<<EOF
$auth
EOF
) || {
    echo "purge-cdn: $CDN refused a batch of ${JITOCSP_PURGE_COUNT:-?} tags" >&2
    exit 1
}
# Cloudflare says {"success": false, "errors": [...]} on some refusals.
if [ "$CDN" = cloudflare ] && ! printf '%s' "$answer" | jq -e '.success == true' >/dev/null; then
    echo "purge-cdn: cloudflare: $(printf '%s' "$answer" | jq -c '.errors')" >&2
    exit 1
fi
