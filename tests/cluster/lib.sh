# Shared helpers for tests/cluster scripts. Sourced, not executed.
# shellcheck shell=bash

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_SRC/../.." && pwd)
# shellcheck source=versions.env
. "$CLUSTER_SRC/versions.env"

CACHE_ROOT=${CAPTUREFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capturefleet}
# The cache key covers every pinned version and every input file of the Go builds, so any
# change rebuilds and an unchanged tree reuses the binaries (CI clones afresh each run).
cache_key() {
  cat "$CLUSTER_SRC/versions.env" \
      "$CLUSTER_SRC"/k8s/go.{mod,sum} "$CLUSTER_SRC"/etcd/go.{mod,sum} \
      "$CLUSTER_SRC"/provisioner/go.{mod,sum} "$CLUSTER_SRC"/provisioner/*.go \
      "$CLUSTER_SRC/build.sh" | sha256sum | cut -c1-12
}
BIN_DIR="$CACHE_ROOT/cluster-$K8S_VERSION-$(cache_key)/bin"
STATE_DIR=${CLUSTER_STATE_DIR:-$REPO_ROOT/target/cluster}

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
