# Shared helpers for the sink test-server scripts (install, server, up, down). Sourced.
# shellcheck shell=bash

SINKS_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SINKS_SRC/../.." && pwd)
# shellcheck source=versions.env
. "$SINKS_SRC/versions.env"

CACHE_ROOT=${CAPTUREFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capturefleet}
VERSITYGW_DIR=$CACHE_ROOT/versitygw-$VERSITYGW_VERSION
AIOSMTPD_DIR=$CACHE_ROOT/aiosmtpd-$AIOSMTPD_VERSION
# The Kafka cache key also covers the pom, so a changed dependency list re-resolves.
KAFKA_DIR=$CACHE_ROOT/kafka-$KAFKA_VERSION-$(sha256sum "$SINKS_SRC/kafka/pom.xml" | cut -c1-8)
# Where running servers keep their state (data, logs, pid, ports); tests start extra
# instances under $SINKS_STATE/instances/.
SINKS_STATE=${CAPTUREFLEET_SINKS_STATE:-$REPO_ROOT/target/sinks}

log() { printf '[sinks %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Seconds since the epoch with milliseconds, for the timings the scripts print.
now() { date +%s.%3N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A test CA and one loopback serving certificate (localhost, 127.0.0.1) shared by every sink
# test server; clients trust the CA through the sinks' `caFile`. Created once per state dir.
ensure_pki() {
  PKI=$SINKS_STATE/pki
  [ -f "$PKI/server.pem" ] && return 0
  mkdir -p "$PKI"
  local ossl_log=$PKI/openssl.log
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=capturefleet-sinks-test-ca" \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
    printf 'subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' > "$PKI/server.ext"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$PKI/server.key" -out "$PKI/server.csr"
    openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 3650 -out "$PKI/server.crt" -extfile "$PKI/server.ext"
  } >"$ossl_log" 2>&1 || die "openssl failed (see $ossl_log)"
  # Kafka's PEM key store: PKCS#8 key followed by the certificate chain, in one file.
  cat "$PKI/server.key" "$PKI/server.crt" > "$PKI/server.pem.tmp" && mv "$PKI/server.pem.tmp" "$PKI/server.pem"
}
