#!/usr/bin/env bash
# scripts/mkpki.sh DIR — make a small test PKI for jitocsp (idempotent: does nothing if
# DIR/serials.txt already exists). Used by scripts/demo.sh and by integration tests.
#
# Environment:
#   KEYTYPE   ec256 (default) | ec384 | rsa2048   key type of the CA and of every leaf
#   OCSP_URL  AIA OCSP URL put in leaf certificates (default http://127.0.0.1:8080/)
#   CA_CN     CA common name (default "jitocsp demo CA")
#
# Outputs in DIR (all PEM; every private key is unencrypted PKCS#8):
#   ca.pem, ca.key              CA: basicConstraints critical CA:TRUE, keyUsage critical
#                               keyCertSign+cRLSign (+digitalSignature), SKI; valid from
#                               30 days ago for 10 years
#   good.pem, good.key          leaf, valid now (from 1 day ago, 90 days), meant to be imported
#   revoked.pem, revoked.key    leaf, valid now, meant to be imported and then revoked
#   unissued.pem, unissued.key  leaf, valid now, signed by the CA but meant NOT to be imported
#   expired.pem, expired.key    leaf, valid from 20 to 10 days ago (expired)
#   responder.pem, responder.key  delegated OCSP responder cert issued by the CA
#                               (EKU id-kp-OCSPSigning, id-pkix-ocsp-nocheck, 1 year)
#   serials.txt                 one line per cert: `NAME HEXSERIAL` (lowercase hex, no
#                               colons, no leading zeros), NAME in
#                               ca good revoked unissued expired responder
#   index.txt                   OpenSSL CA database as reference for `openssl ocsp -index`:
#                               good V, revoked R (keyCompromise), expired V, responder V;
#                               unissued is NOT listed
#   keytype                     the KEYTYPE used
# Leaves have CA:FALSE, keyUsage digitalSignature, EKU serverAuth, SAN dNSName
# NAME.jitocsp.test, AKI, and AIA OCSP = $OCSP_URL. Serials are 16 random bytes (top bit 0).
set -euo pipefail

die() { printf 'mkpki: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || { sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
DIR="$1"
KEYTYPE="${KEYTYPE:-ec256}"
OCSP_URL="${OCSP_URL:-http://127.0.0.1:8080/}"
CA_CN="${CA_CN:-jitocsp demo CA}"

command -v openssl >/dev/null || die "openssl not found (apt-get install -y openssl)"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"

if [ -f "$DIR/serials.txt" ]; then
    if [ -f "$DIR/keytype" ] && [ "$(cat "$DIR/keytype")" != "$KEYTYPE" ]; then
        die "$DIR already holds a $(cat "$DIR/keytype") PKI; asked for $KEYTYPE (use another DIR)"
    fi
    exit 0
fi

case "$KEYTYPE" in
    ec256)   GENPKEY=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve); MD=sha256 ;;
    ec384)   GENPKEY=(-algorithm EC -pkeyopt ec_paramgen_curve:P-384 -pkeyopt ec_param_enc:named_curve); MD=sha384 ;;
    rsa2048) GENPKEY=(-algorithm RSA -pkeyopt rsa_keygen_bits:2048); MD=sha256 ;;
    *) die "unknown KEYTYPE '$KEYTYPE' (expected ec256, ec384 or rsa2048)" ;;
esac

# Build in a scratch dir and move into place at the end, so an interrupted run leaves
# no half-made PKI that the idempotency check would accept.
WORK="$(mktemp -d "$DIR/.mkpki.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

when() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
newserial() {
    # 16 random bytes with the top bit cleared (positive INTEGER, 127 bits of entropy),
    # printed in lowercase hex without leading zeros.
    local s
    s="$(openssl rand -hex 16)"
    s="$(printf '%x' $((0x${s:0:1} & 7)))${s:1}"
    s="${s#"${s%%[!0]*}"}"
    printf '%s' "${s:-1}"
}

cat >"$WORK/openssl.cnf" <<EOF
[ ca ]
default_ca = jitocsp_ca

[ jitocsp_ca ]
dir             = $WORK
database        = \$dir/index.txt
new_certs_dir   = \$dir/newcerts
serial          = \$dir/serial
default_md      = $MD
policy          = policy_any
unique_subject  = no
email_in_dn     = no
copy_extensions = none
preserve        = yes

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = placeholder

[ ext_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier   = hash

[ ext_leaf ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = DNS:\${ENV::LEAF_DNS}
authorityInfoAccess    = OCSP;URI:$OCSP_URL

[ ext_responder ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = critical, OCSPSigning
noCheck                = ignored
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF
mkdir -p "$WORK/newcerts"
: >"$WORK/index.txt"
export LEAF_DNS=unused.jitocsp.test

SSL() { openssl "$@" 2>"$WORK/err" || { cat "$WORK/err" >&2; die "openssl $1 failed (output above)"; }; }

# issue NAME CN EXT START END [selfsign]
issue() {
    local name="$1" cn="$2" ext="$3" start="$4" end="$5" serial
    serial="$(newserial)"
    SSL genpkey "${GENPKEY[@]}" -out "$WORK/$name.key"
    SSL req -new -config "$WORK/openssl.cnf" -key "$WORK/$name.key" -subj "/CN=$cn" -out "$WORK/$name.csr"
    # openssl ca wants an even number of hex digits in the serial file
    if [ $(( ${#serial} % 2 )) -eq 1 ]; then printf '0%s\n' "$serial"; else printf '%s\n' "$serial"; fi >"$WORK/serial"
    if [ "${6:-}" = selfsign ]; then
        SSL ca -batch -config "$WORK/openssl.cnf" -selfsign -keyfile "$WORK/$name.key" \
            -extensions "$ext" -startdate "$start" -enddate "$end" -notext \
            -in "$WORK/$name.csr" -out "$WORK/$name.pem"
    else
        SSL ca -batch -config "$WORK/openssl.cnf" -cert "$WORK/ca.pem" -keyfile "$WORK/ca.key" \
            -extensions "$ext" -startdate "$start" -enddate "$end" -notext \
            -in "$WORK/$name.csr" -out "$WORK/$name.pem"
    fi
    rm -f "$WORK/$name.csr"
    printf '%s %s\n' "$name" "$serial" >>"$WORK/serials.txt"
}

issue ca "$CA_CN" ext_ca "$(when '-30 days')" "$(when '+3650 days')" selfsign
for leaf in good revoked unissued; do
    LEAF_DNS="$leaf.jitocsp.test" issue "$leaf" "$leaf.jitocsp.test" ext_leaf "$(when '-1 day')" "$(when '+90 days')"
done
LEAF_DNS=expired.jitocsp.test issue expired expired.jitocsp.test ext_leaf "$(when '-20 days')" "$(when '-10 days')"
issue responder "jitocsp demo OCSP responder" ext_responder "$(when '-1 day')" "$(when '+365 days')"

# Reference database for `openssl ocsp -index`: revoke "revoked", forget "unissued",
# drop the self-signed CA's own row.
SSL ca -config "$WORK/openssl.cnf" -cert "$WORK/ca.pem" -keyfile "$WORK/ca.key" \
    -revoke "$WORK/revoked.pem" -crl_reason keyCompromise
for name in ca unissued; do
    s="$(awk -v n="$name" '$1 == n { print toupper($2) }' "$WORK/serials.txt")"
    awk -F'\t' -v s="$s" '{ x = $4; sub(/^0+/, "", x) } x != s' "$WORK/index.txt" >"$WORK/index.new"
    mv "$WORK/index.new" "$WORK/index.txt"
done

# sanity: every leaf verifies against the CA
for name in good revoked unissued responder; do
    openssl verify -CAfile "$WORK/ca.pem" "$WORK/$name.pem" >/dev/null 2>&1 \
        || die "internal error: $name.pem does not verify against ca.pem"
done

chmod 600 "$WORK"/*.key
printf '%s\n' "$KEYTYPE" >"$WORK/keytype"
for f in ca good revoked unissued expired responder; do
    mv "$WORK/$f.pem" "$WORK/$f.key" "$DIR/"
done
mv "$WORK/index.txt" "$WORK/keytype" "$DIR/"
mv "$WORK/serials.txt" "$DIR/serials.txt"   # last: marks the PKI complete
echo "mkpki: created $KEYTYPE PKI in $DIR" >&2
