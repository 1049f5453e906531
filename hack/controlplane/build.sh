#!/usr/bin/env bash
# Builds the control-plane binaries the tests and the demo run (etcd, kube-apiserver,
# kube-controller-manager, kubectl, helm) from the pinned Go modules beside this script,
# into a cache outside the repository keyed by the pins. A warm cache makes this a no-op.
# Prints the bin folder on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(grep -oE "k8s.io/kubernetes v[0-9.]+" "$here/kubernetes/go.mod" | head -1 | cut -d" " -f2)
key=$(cat "$here"/*/go.mod "$here"/*/go.sum "$here/build.sh" | sha256sum | cut -c1-12)
cache_root=${SMTPGATE_CACHE:-$HOME/.cache/smtpgate}
bin="$cache_root/controlplane/$k8s_version-$key/bin"
tools=(etcd kube-apiserver kube-controller-manager kubectl helm)

complete() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if complete; then echo "$bin"; exit 0; fi

log() { printf '[controlplane] %s\n' "$*" >&2; }
log "building $k8s_version control plane into $bin"
log "a cold build takes about 15-25 minutes on 2 cores; later runs reuse the cache"
mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
minor=$(echo "$k8s_version" | cut -d. -f2)
stamp="-s -w"
for var in "gitVersion=$k8s_version" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
           "buildDate=1970-01-01T00:00:00Z" "gitCommit=$k8s_version"; do
  stamp="$stamp -X k8s.io/component-base/version.$var -X k8s.io/client-go/pkg/version.$var"
done
build() {  # module-dir package output [ldflags]
  local start=$SECONDS
  log "go build $2"
  (cd "$here/$1" && go build -trimpath -ldflags "${4:--s -w}" -o "$bin.partial/$3" "$2")
  log "  $3 built in $((SECONDS - start))s"
}
[ -x "$bin.partial/etcd" ] || build etcd go.etcd.io/etcd/server/v3 etcd
for cmd in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$bin.partial/$cmd" ] || build kubernetes "k8s.io/kubernetes/cmd/$cmd" "$cmd" "$stamp"
done
helm_version=$(grep -oE "helm.sh/helm/v3 v[0-9.]+" "$here/helm/go.mod" | head -1 | cut -d" " -f2)
[ -x "$bin.partial/helm" ] || build helm helm.sh/helm/v3/cmd/helm helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
rm -rf "$bin" && mv "$bin.partial" "$bin"
log "done"
echo "$bin"
