#!/usr/bin/env bash
# Build the test control plane's binaries from their Go modules into the cache directory
# (see lib.sh). Each binary is built only when missing, so a warm run does nothing.
# Prints the bin directory on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -trimpath"
mkdir -p "$BIN_DIR"
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"

build() { # name, module dir, package, [ldflags]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:--s -w} start=$SECONDS
  [ -x "$BIN_DIR/$name" ] && return 0
  log "building $name ($pkg) — the first build takes minutes"
  (cd "$CLUSTER_SRC/$dir" && go build -ldflags "$ldflags" -o "$BIN_DIR/$name.tmp" "$pkg") \
    || die "go build of $name failed"
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start)) s"
}

install_tool() { # name, module path of the command, version
  local name=$1 pkg=$2 version=$3 start=$SECONDS
  [ -x "$BIN_DIR/$name" ] && return 0
  log "building $name ($pkg@$version)"
  # go install pkg@version ignores the surrounding module and checks sums against sum.golang.org.
  (cd "$CLUSTER_SRC" && GOFLAGS=-trimpath GOBIN="$BIN_DIR" go install -ldflags "-s -w" "$pkg@$version") \
    || die "go install of $name failed"
  log "built $name in $((SECONDS - start)) s"
}

build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build provisioner provisioner .
install_tool kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
echo "$BIN_DIR"
