#!/usr/bin/env bash
# A five-minute tour of ocspstaple with no internet: a throwaway CA, a real
# `openssl ocsp` responder on this machine, and the three things ocspstaple is
# for -- write a valid staple, keep it through an outage, pass on a revocation.
#
#   bash contrib/demo.sh
#
# Needs openssl and either `ocspstaple` on PATH or `python3 -m ocspstaple`
# importable (e.g. PYTHONPATH=. from a checkout). OCSPSTAPLE="cmd args"
# overrides the choice. Everything lives in a `mktemp -d` directory that is
# removed at exit, and the responder is stopped by its PID.
#
# Note: `openssl ocsp -port` listens on every address of this machine (not
# only 127.0.0.1) for the few seconds the demo runs.
set -euo pipefail

say()  { printf '\n== %s\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die()  { printf '\ndemo.sh: FAILED: %s\n' "$*" >&2; exit 1; }
indent() { sed 's/^/   | /'; }

command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"

if [ -n "${OCSPSTAPLE:-}" ]; then
    read -r -a OCSPSTAPLE_CMD <<<"$OCSPSTAPLE"
elif command -v ocspstaple >/dev/null 2>&1; then
    OCSPSTAPLE_CMD=(ocspstaple)
elif command -v python3 >/dev/null 2>&1 && python3 -c 'import ocspstaple' >/dev/null 2>&1; then
    OCSPSTAPLE_CMD=(python3 -m ocspstaple)
else
    die "ocspstaple is not on PATH and python3 cannot import it (pip install . or PYTHONPATH=/path/to/checkout)"
fi

# The responder is on this machine: never send the demo's requests to a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

WORK=""
RESPONDER_PID=""

stop_responder() {
    if [ -n "$RESPONDER_PID" ]; then
        kill "$RESPONDER_PID" 2>/dev/null || true
        # Give it a moment to go, then insist.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$RESPONDER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$RESPONDER_PID" 2>/dev/null || true
        wait "$RESPONDER_PID" 2>/dev/null || true
        RESPONDER_PID=""
    fi
}

cleanup() {
    local rc=$?
    stop_responder
    if [ -n "$WORK" ]; then
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocspstaple-demo.XXXXXX")
cd "$WORK"

say "Working in $WORK (removed at exit)"
info "ocspstaple command: ${OCSPSTAPLE_CMD[*]}"

# -- a throwaway PKI ------------------------------------------------------------
say "Making a throwaway CA, an OCSP responder certificate and a leaf certificate"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

cat >ca.cnf <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
openssl req -x509 "${EC[@]}" -keyout ca.key -out ca.pem -subj "/CN=ocspstaple Demo CA" \
    -days 3650 -config ca.cnf -extensions v3_ca 2>/dev/null

cat >responder.ext <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
EOF
openssl req -new "${EC[@]}" -keyout responder.key -out responder.csr -subj "/CN=ocspstaple Demo OCSP Responder" 2>/dev/null
openssl x509 -req -in responder.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 30 \
    -extfile responder.ext -out responder.pem 2>/dev/null
info "ca.pem: the CA; responder.pem: signs OCSP answers for it (id-kp-OCSPSigning)"

# OpenSSL's CA database: status, expiry, revocation time, serial, file, subject.
LEAF_SERIAL=2A0B
LEAF_SUBJECT=/CN=www.example.test
EXPIRY=$(date -u -d '+30 days' +%y%m%d%H%M%SZ)
printf 'V\t%s\t\t%s\tunknown\t%s\n' "$EXPIRY" "$LEAF_SERIAL" "$LEAF_SUBJECT" >index.txt

# -- the responder ----------------------------------------------------------------
PORT=""
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 40000))
    fi
}

# Start `openssl ocsp` on $PORT; wait for its "waiting for OCSP client
# connections" line (never probe its port: a connect without a request makes
# it spin forever). Returns 1 if the port was taken, dies on anything else.
start_responder() {
    local log="responder.$1.log"
    openssl ocsp -index index.txt -port "$PORT" -rsigner responder.pem -rkey responder.key \
        -CA ca.pem -nmin 60 -ignore_err >"$log" 2>&1 &
    RESPONDER_PID=$!
    for _ in $(seq 1 200); do
        if grep -q "waiting for OCSP client connections" "$log"; then
            return 0
        fi
        if ! kill -0 "$RESPONDER_PID" 2>/dev/null; then
            wait "$RESPONDER_PID" 2>/dev/null || true
            RESPONDER_PID=""
            if grep -q -e "Address already in use" -e "Error starting accept" "$log"; then
                return 1
            fi
            cat "$log" >&2
            die "openssl ocsp did not start"
        fi
        sleep 0.05
    done
    die "openssl ocsp printed no 'waiting for OCSP client connections' within 10 s"
}

say "Starting the OCSP responder: openssl ocsp -index index.txt -port PORT ..."
for _ in 1 2 3 4 5; do
    PORT=$(free_port)
    if start_responder first; then break; fi
    PORT=""
done
[ -n "$PORT" ] || die "could not find a free port for openssl ocsp"
URL="http://127.0.0.1:$PORT/"
info "responder PID $RESPONDER_PID listening on port $PORT"

cat >leaf.ext <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:www.example.test
authorityInfoAccess = OCSP;URI:$URL
EOF
openssl req -new "${EC[@]}" -keyout leaf.key -out leaf.csr -subj "$LEAF_SUBJECT" 2>/dev/null
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial "0x$LEAF_SERIAL" -days 30 \
    -extfile leaf.ext -out leaf.pem 2>/dev/null
cat leaf.pem ca.pem >fullchain.pem
STAPLE=fullchain.pem.ocsp
info "fullchain.pem: leaf (serial $LEAF_SERIAL, OCSP URL $URL) followed by its issuer"

# Run ocspstaple, show what it printed, leave its exit code in $RC.
RC=0
OUT=""
run_ocspstaple() {
    info "\$ ocspstaple $*"
    RC=0
    OUT=$("${OCSPSTAPLE_CMD[@]}" "$@" 2>&1) || RC=$?
    if [ -n "$OUT" ]; then printf '%s\n' "$OUT" | indent; fi
    info "exit code $RC"
}

# What OpenSSL itself makes of the staple on disk.
STATUS=""
show_staple() {
    local text
    text=$(openssl ocsp -respin "$STAPLE" -CAfile ca.pem -issuer ca.pem -cert leaf.pem -resp_text 2>&1) \
        || { printf '%s\n' "$text" | indent; die "openssl ocsp -respin could not verify $STAPLE"; }
    info "\$ openssl ocsp -respin $STAPLE -CAfile ca.pem -issuer ca.pem -cert leaf.pem -resp_text"
    printf '%s\n' "$text" | grep -E "^Response verify OK|^ +(Cert Status|This Update|Next Update|Revocation Time|Revocation Reason):" \
        | sed 's/^ *//' | indent || true
    grep -q "Response verify OK" <<<"$text" || die "OpenSSL did not verify $STAPLE"
    STATUS=$(sed -n 's/^ *Cert Status: *//p' <<<"$text" | head -n1)
}

# -- 1: a first staple ----------------------------------------------------------------
say "Step 1: fetch a first staple (expected: exit 0, $STAPLE written)"
run_ocspstaple refresh --cert fullchain.pem -v
[ "$RC" -eq 0 ] || die "step 1: ocspstaple exited $RC, expected 0"
[ -s "$STAPLE" ] || die "step 1: $STAPLE was not written"
show_staple
[ "$STATUS" = good ] || die "step 1: OpenSSL reads the staple as '$STATUS', expected good"
cp "$STAPLE" staple.step1

# -- 2: the responder goes away ------------------------------------------------------------
say "Step 2: stop the responder (PID $RESPONDER_PID) and force a refresh"
info "Expected: exit 1 -- the refresh failed, but the previous staple is kept and still valid"
stop_responder
run_ocspstaple refresh --cert fullchain.pem --force --timeout 2
[ "$RC" -eq 1 ] || die "step 2: ocspstaple exited $RC, expected 1"
cmp -s "$STAPLE" staple.step1 || die "step 2: $STAPLE changed while the responder was down"
info "$STAPLE is byte-for-byte the staple from step 1"

# -- 3: a revocation ------------------------------------------------------------------------
say "Step 3: revoke the leaf in index.txt and restart the responder"
info "(openssl ocsp notices index.txt changes one request late, so it is restarted)"
REVOKED_AT=$(date -u -d '-1 minute' +%y%m%d%H%M%SZ)
printf 'R\t%s\t%s,keyCompromise\t%s\tunknown\t%s\n' "$EXPIRY" "$REVOKED_AT" "$LEAF_SERIAL" "$LEAF_SUBJECT" >index.txt
started=""
for _ in $(seq 1 20); do
    if start_responder second; then started=yes; break; fi
    sleep 0.2
done
[ -n "$started" ] || die "step 3: could not restart openssl ocsp on port $PORT"
info "responder PID $RESPONDER_PID listening on port $PORT again"
info "Expected: exit 2 and a REVOKED line -- the revocation is written, not hidden"
run_ocspstaple refresh --cert fullchain.pem --force
[ "$RC" -eq 2 ] || die "step 3: ocspstaple exited $RC, expected 2"
grep -q REVOKED <<<"$OUT" || die "step 3: ocspstaple printed no REVOKED line"
show_staple
[ "$STATUS" = revoked ] || die "step 3: OpenSSL reads the staple as '$STATUS', expected revoked"

stop_responder
say "All steps behaved as expected. Cleaning up $WORK"
exit 0
