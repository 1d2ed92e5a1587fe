#!/usr/bin/env bash
# SoftHSM2 tokens for jitocsp tests, benchmarks and demos: everything lives in one directory.
#
#   scripts/softhsm.sh install
#       install softhsm2 and opensc (pkcs11-tool) with apt-get when missing (idempotent)
#   scripts/softhsm.sh module
#       print the path of the SoftHSM2 PKCS#11 module
#   scripts/softhsm.sh init DIR LABEL PIN
#       write DIR/softhsm2.conf (token directory DIR/tokens) and create token LABEL with user
#       PIN (security officer PIN "so-PIN"); prints `export SOFTHSM2_CONF=DIR/softhsm2.conf`.
#       Every other command, and jitocsp, must run with that SOFTHSM2_CONF.
#   scripts/softhsm.sh import DIR LABEL PIN OBJECT ID KEY.pem
#       import a PKCS#8 PEM private key (and its public key) as OBJECT (CKA_LABEL) with
#       CKA_ID = ID (hex) into token LABEL
#   scripts/softhsm.sh generate DIR LABEL PIN OBJECT ID KEYTYPE
#       generate a key pair in the token (KEYTYPE: EC:prime256v1, EC:secp384r1, rsa:2048);
#       prints the public key's SubjectPublicKeyInfo as PEM
#
# The PIN is an argument here because this is a test tool for throw-away tokens; jitocsp itself
# reads it only from the environment or a file (pin-source=env:NAME / file:PATH).
set -euo pipefail

log() { printf 'softhsm: %s\n' "$*" >&2; }
die() { printf 'softhsm: error: %s\n' "$*" >&2; exit 1; }

module_path() {
    local candidate
    for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
        /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so \
        /usr/lib64/pkcs11/libsofthsm2.so; do
        if [ -f "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

install() {
    if command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null && module_path >/dev/null; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "need softhsm2 and opensc: sudo apt-get install -y softhsm2 opensc"
    command -v apt-get >/dev/null || die "need softhsm2 and opensc, and apt-get is not available"
    log "apt-get install -y softhsm2 opensc"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends softhsm2 opensc >/dev/null \
        || die "apt-get install softhsm2 opensc failed"
    module_path >/dev/null || die "softhsm2 installed but libsofthsm2.so not found"
}

conf_of() { printf '%s/softhsm2.conf\n' "$(cd "$1" && pwd -P)"; }

init() {
    local dir="$1" label="$2" pin="$3"
    install
    mkdir -p "$dir/tokens"
    local abs
    abs="$(cd "$dir" && pwd -P)"
    cat >"$abs/softhsm2.conf" <<EOF
directories.tokendir = $abs/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
    export SOFTHSM2_CONF="$abs/softhsm2.conf"
    softhsm2-util --init-token --free --label "$label" --so-pin "so-$pin" --pin "$pin" >/dev/null \
        || die "cannot create token $label in $abs/tokens"
    log "token $label created in $abs/tokens"
    printf 'export SOFTHSM2_CONF=%s\n' "$SOFTHSM2_CONF"
}

import_key() {
    local dir="$1" label="$2" pin="$3" object="$4" id="$5" key="$6"
    export SOFTHSM2_CONF
    SOFTHSM2_CONF="$(conf_of "$dir")"
    local pkcs8
    pkcs8="$(mktemp)"
    # softhsm2-util wants unencrypted PKCS#8; convert SEC1/PKCS#1 keys on the way.
    openssl pkcs8 -topk8 -nocrypt -in "$key" -out "$pkcs8" || { rm -f "$pkcs8"; die "cannot read $key"; }
    softhsm2-util --import "$pkcs8" --token "$label" --label "$object" --id "$id" --pin "$pin" >/dev/null \
        || { rm -f "$pkcs8"; die "cannot import $key into token $label"; }
    rm -f "$pkcs8"
}

generate() {
    local dir="$1" label="$2" pin="$3" object="$4" id="$5" type="$6"
    export SOFTHSM2_CONF
    SOFTHSM2_CONF="$(conf_of "$dir")"
    local module der
    module="$(module_path)"
    pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" --keypairgen --key-type "$type" \
        --label "$object" --id "$id" --usage-sign >/dev/null 2>&1 || die "cannot generate $type in token $label"
    der="$(mktemp)"
    pkcs11-tool --module "$module" --token-label "$label" --read-object --type pubkey --label "$object" \
        -o "$der" >/dev/null 2>&1 || { rm -f "$der"; die "cannot read the public key of $object"; }
    openssl pkey -pubin -inform DER -in "$der"
    rm -f "$der"
}

command="${1:-}"
shift || true
case "$command" in
    install) install ;;
    module) install && module_path ;;
    init) [ $# -eq 3 ] || die "usage: init DIR LABEL PIN"; init "$@" ;;
    import) [ $# -eq 6 ] || die "usage: import DIR LABEL PIN OBJECT ID KEY.pem"; import_key "$@" ;;
    generate) [ $# -eq 6 ] || die "usage: generate DIR LABEL PIN OBJECT ID KEYTYPE"; generate "$@" ;;
    *) die "usage: $0 install | module | init DIR LABEL PIN | import DIR LABEL PIN OBJECT ID KEY.pem | generate DIR LABEL PIN OBJECT ID KEYTYPE" ;;
esac
