"""OCI images assembled offline, without a registry or a daemon: the node's sandbox ("pause")
image from our own static program, and a small busybox image from Debian's busybox-static.
An image is written as an OCI image-layout tar, which ``ctr images import`` loads into
containerd.

    tar = oci_archive(path, "smtpgate.local/pause:1", {"pause": File(data, 0o755)},
                      entrypoint=["/pause"])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
from dataclasses import dataclass

HERE = pathlib.Path(__file__).resolve().parent
PAUSE_IMAGE = "smtpgate.local/pause:1"
BUSYBOX_IMAGE = "smtpgate.local/busybox:1"

# A fixed time for every entry, so the same inputs give the same digests.
EPOCH = 0


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    symlink: str | None = None
    directory: bool = False


def _layer(files: dict[str, File]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for depth in range(1, len(parts)):  # parent folders first
                folder = "/".join(parts[:depth])
                if folder not in made and folder not in files:
                    made.add(folder)
                    tar.addfile(_info(folder, File(directory=True, mode=0o755)))
            entry = files[name]
            info = _info(name.strip("/"), entry)
            made.add(info.name)
            tar.addfile(info, io.BytesIO(entry.data) if info.isreg() else None)
    return buffer.getvalue()


def _info(name: str, entry: File) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid = EPOCH, entry.mode, 0, 0
    if entry.directory:
        info.type = tarfile.DIRTYPE
    elif entry.symlink is not None:
        info.type, info.linkname = tarfile.SYMTYPE, entry.symlink
    else:
        info.size = len(entry.data)
    return info


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(
    path: pathlib.Path,
    name: str,
    files: dict[str, File],
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
) -> pathlib.Path:
    """Write a one-layer linux/amd64 image named ``name`` as an OCI image-layout tar."""
    layer = _layer(files)
    with tarfile.open(path, "w") as tar:
        layer_digest = _blob(tar, layer)
        config = _json(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "1970-01-01T00:00:00Z",
                "config": {
                    "Entrypoint": entrypoint,
                    "Cmd": cmd,
                    "Env": env
                    or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                },
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }
        )
        config_digest = _blob(tar, config)
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": len(layer),
                    }
                ],
            }
        )
        manifest_digest = _blob(tar, manifest)
        index = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {
                            "io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                        },
                    }
                ],
            }
        )
        for entry, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
        ):
            info = tarfile.TarInfo(entry)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def pause_archive(folder: pathlib.Path, pause_binary: pathlib.Path) -> pathlib.Path:
    """The sandbox image: our static ``pause`` program as /pause."""
    return oci_archive(
        folder / "pause.tar",
        PAUSE_IMAGE,
        {"pause": File(pause_binary.read_bytes(), 0o755)},
        entrypoint=["/pause"],
    )


def busybox_archive(folder: pathlib.Path) -> pathlib.Path:
    """A busybox image from the host's /bin/busybox (Debian's busybox-static package): one
    static binary and a link per applet in /bin."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    files = {"bin/busybox": File(pathlib.Path(busybox).read_bytes(), 0o755)}
    for applet in applets:
        if applet != "busybox":
            files[f"bin/{applet}"] = File(symlink="busybox")
    files["tmp"] = File(directory=True, mode=0o1777)
    files["etc/passwd"] = File(
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    )
    files["etc/group"] = File(b"root:x:0:\nnogroup:x:65534:\n")
    return oci_archive(folder / "busybox.tar", BUSYBOX_IMAGE, files, cmd=["/bin/sh"])


# -- the project's own images, built from its Dockerfiles with buildah ---------------------

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("SMTPGATE_CACHE", pathlib.Path.home() / ".cache/smtpgate"))
# What the Dockerfiles COPY: a change to any of these makes a new image.
BUILD_INPUTS = (
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "connectors",
    "operator",
    "receiver",
    "plugin",
)
# Fully qualified, as the CRI normalizes what a pod spec says ("smtpgate/receiver:local").
PROJECT_IMAGES = {
    "operator": "docker.io/smtpgate/operator:local",
    "receiver": "docker.io/smtpgate/receiver:local",
}


class ImageBuildError(RuntimeError):
    pass


def _buildah(*args: str) -> subprocess.CompletedProcess[str]:
    store = CACHE / "buildah"
    argv = [
        "buildah",
        "--root",
        str(store / "root"),
        "--runroot",
        str(store / "run"),
        "--storage-driver",
        "vfs",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def base_image() -> str:
    """The local Debian stand-in for python:3.11-slim-bookworm (hack/node/base.sh), committed
    to buildah's store once per base key; returns its name."""
    done = subprocess.run(
        ["bash", str(HERE / "base.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise ImageBuildError(f"hack/node/base.sh failed with {done.returncode}")
    rootfs = pathlib.Path(done.stdout.strip().splitlines()[-1])
    name = f"localhost/smtpgate-base:{rootfs.parent.name}"
    if _buildah("images", "--quiet", "--filter", f"reference={name}").stdout.strip():
        return name
    container = _buildah("from", "scratch").stdout.strip()
    try:
        _buildah("add", container, str(rootfs), "/")
        _buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--env",
            "DEB_PYTHON_INSTALL_LAYOUT=deb",
            "--cmd",
            "python3",
            container,
        )
        _buildah("commit", "--quiet", container, name)
    finally:
        _buildah("rm", container)
    return name


def _inputs_key(base: str, dockerfile: pathlib.Path) -> str:
    digest = hashlib.sha256(base.encode())
    digest.update(dockerfile.read_bytes())
    for top in BUILD_INPUTS:
        path = ROOT / top
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def project_archive(component: str) -> tuple[str, pathlib.Path]:
    """Build ``<component>/Dockerfile`` on the local base with buildah (vfs storage, chroot
    isolation, no daemon) and export it as an OCI archive; cached by a hash of the base and
    the files the Dockerfile copies. Returns (image name, archive)."""
    name = PROJECT_IMAGES[component]
    dockerfile = ROOT / component / "Dockerfile"
    base = base_image()
    key = _inputs_key(base, dockerfile)
    archive = CACHE / "images" / f"{component}-{key}.tar"
    if archive.exists():
        return name, archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    tag = f"localhost/smtpgate-{component}:{key}"
    build = [
        "bud",
        "--isolation",
        "chroot",
        "--pull-never",
        "--layers=false",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(dockerfile),
        "-t",
        tag,
    ]
    # pip inside the build reaches PyPI through this host's trust store (which may hold a
    # proxy's CA); mounted for RUN steps only, never part of the image.
    bundle = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        build += ["--volume", f"{bundle}:{bundle}:ro"]
    _buildah(*build, str(ROOT))
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _buildah("push", "--quiet", tag, f"oci-archive:{partial}:{name}")
    _buildah("rmi", tag)
    partial.rename(archive)
    return name, archive


if __name__ == "__main__":  # make images
    for room in PROJECT_IMAGES:
        image, path = project_archive(room)
        print(f"{image}\t{path}")
