#!/usr/bin/env bash
# Builds the local stand-in for python:3.11-slim-bookworm from Debian packages (debootstrap
# bookworm, whose python3 is 3.11), for building the project's Dockerfiles with no registry.
# Laid out like the upstream image where the Dockerfiles rely on it: `python` and `pip` on
# PATH, pip allowed to install outside a venv, and what `pip install --prefix=/install` +
# `COPY /install /usr/local` leaves in /usr/local importable: the image sets
# DEB_PYTHON_INSTALL_LAYOUT=deb (hack/node/images.py), so pip writes lib/python3/dist-packages
# and bin/ under the prefix instead of Debian's local/ detour, and a .pth puts
# /usr/local/lib/python3/dist-packages (and upstream's site-packages) on sys.path. Cached under ~/.cache/smtpgate/base/<hash of the package list and this script>.
# Prints the rootfs tar on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here/base-packages.txt" "$here/base.sh" | sha256sum | cut -c1-12)
cache_root=${SMTPGATE_CACHE:-$HOME/.cache/smtpgate}
out="$cache_root/base/bookworm-$key"
if [ -f "$out/rootfs.tar" ]; then echo "$out/rootfs.tar"; exit 0; fi
log() { printf '[base] %s\n' "$*" >&2; }
command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 2; }
mirror=${SMTPGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=$(grep -v '^#' "$here/base-packages.txt" | xargs | tr ' ' ,)
start=$SECONDS
rm -rf "$out.partial" && mkdir -p "$out.partial"
root="$out.partial/rootfs"
log "debootstrap bookworm ($packages) into $root"
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >&2
chroot "$root" sh -eu -c '
  rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
  ln -sf python3 /usr/bin/python
  mkdir -p /usr/local/lib/python3.11/site-packages /usr/local/lib/python3/dist-packages
  printf "%s\n" /usr/local/lib/python3/dist-packages /usr/local/lib/python3.11/site-packages \
    > /usr/lib/python3/dist-packages/smtpgate-usr-local.pth
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
'
# No device nodes, mounts or sockets in an image layer.
rm -rf "$root/dev"/* "$root/proc"/* "$root/sys"/* "$root/run"/*
tar --numeric-owner --xattrs -C "$root" -cf "$out.partial/rootfs.tar" .
rm -rf "$root"
rm -rf "$out" && mv "$out.partial" "$out"
log "base built in $((SECONDS - start))s"
echo "$out/rootfs.tar"
