#!/usr/bin/env bash
# Builds the node binaries (kube-scheduler, kubelet, kube-proxy) from the same pinned
# k8s.io/kubernetes version as hack/controlplane/build.sh (its own go.mod adds the modules
# only the node needs), plus crictl and the pause image's program,
# into a cache dir of their own keyed by those pins and this script. Keeping them apart
# leaves the control-plane cache valid. A warm cache makes this a no-op.
# Prints the bin folder on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mod="$here/kubernetes"
pin() { grep -oE "k8s.io/kubernetes v[0-9.]+" "$1/go.mod" | head -1 | cut -d" " -f2; }
k8s_version=$(pin "$mod")
if [ "$k8s_version" != "$(pin "$here/../controlplane/kubernetes")" ]; then
  echo "hack/node/kubernetes pins $k8s_version, hack/controlplane/kubernetes another" >&2
  exit 1
fi
key=$(cat "$mod"/go.* "$here"/cri-tools/go.* "$here/build.sh" "$here"/pause/* | sha256sum | cut -c1-12)
cache_root=${SMTPGATE_CACHE:-$HOME/.cache/smtpgate}
bin="$cache_root/node/$k8s_version-$key/bin"
tools=(kube-scheduler kubelet kube-proxy crictl pause)

complete() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if complete; then echo "$bin"; exit 0; fi

log() { printf '[node] %s\n' "$*" >&2; }
log "building $k8s_version node binaries into $bin"
log "a cold build takes several minutes on 2 cores; later runs reuse the cache"
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
  (cd "$1" && go build -trimpath -ldflags "${4:--s -w}" -o "$bin.partial/$3" "$2")
  log "  $3 built in $((SECONDS - start))s"
}
for cmd in kube-scheduler kubelet kube-proxy; do
  [ -x "$bin.partial/$cmd" ] || build "$mod" "k8s.io/kubernetes/cmd/$cmd" "$cmd" "$stamp"
done
cri_version=$(grep -oE "sigs.k8s.io/cri-tools v[0-9.]+" "$here/cri-tools/go.mod" | cut -d" " -f2)
[ -x "$bin.partial/crictl" ] || build "$here/cri-tools" sigs.k8s.io/cri-tools/cmd/crictl crictl \
  "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$cri_version"
[ -x "$bin.partial/pause" ] || build "$here/pause" . pause
rm -rf "$bin" && mv "$bin.partial" "$bin"
log "done"
echo "$bin"
