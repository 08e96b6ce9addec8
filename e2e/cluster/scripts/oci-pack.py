#!/usr/bin/env python3
"""Packs executables into an OCI image archive without Docker.

Usage: oci-pack.py NAME:TAG OUT.tar ENTRYPOINT_BINARY [EXTRA_BINARY ...]
                   [--file=HOST_PATH ...] [--link=IMAGE_PATH=TARGET ...] [--empty=IMAGE_PATH ...]

Each binary goes to /usr/local/bin/<basename> together with the shared libraries that `ldd`
reports for it, at their host paths, so a dynamically linked Rust binary runs as it does on the
host. `--file` copies a host file (a directory: every file in it) to the same path in the image,
with its libraries; `--link` adds a symlink; `--empty` an empty file (the proxy image uses these
for iptables: its multi-call binaries, their extension modules and command links, and the
xtables lock file, which a read-only root filesystem cannot create). The archive is an OCI image layout that `ctr images import` understands; the image name is
recorded in the `io.containerd.image.name` annotation.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def shared_libraries(binary):
    """Host paths of the shared libraries the dynamic loader would load for `binary`."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if result.returncode != 0:  # "not a dynamic executable": a static binary needs nothing
        return []
    paths = []
    for line in result.stdout.splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/"):
                paths.append(part)
    return paths


def add_file(archive, host_path, image_path, mode):
    with open(host_path, "rb") as source:
        data = source.read()
    info = tarfile.TarInfo(image_path.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def layer_bytes(binaries, files=(), links=(), empties=()):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        seen = set()
        for directory in ("tmp",):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777, 0
            archive.addfile(info)

        def with_libraries(host_path):
            for library in shared_libraries(host_path):
                if library not in seen:
                    seen.add(library)
                    add_file(archive, os.path.realpath(library), library, 0o755)

        for binary in binaries:
            add_file(archive, binary, "/usr/local/bin/" + os.path.basename(binary), 0o755)
            with_libraries(binary)
        for path in files:
            paths = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
            for file in paths:
                if file not in seen:
                    seen.add(file)
                    add_file(archive, os.path.realpath(file), file, 0o755)
                    with_libraries(file)
        for link, target in links:
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            archive.addfile(info)
        for path in empties:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = 0, 0o644, 0
            archive.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


def blob(archive, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest)
    info.size, info.mtime = len(data), 0
    archive.addfile(info, io.BytesIO(data))
    return "sha256:" + digest, len(data)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    name, out, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    binaries = [a for a in rest if not a.startswith("--")]
    option = lambda flag: [a.split("=", 1)[1] for a in rest if a.startswith(flag + "=")]
    links = [tuple(link.split("=", 1)) for link in option("--link")]
    layer = layer_bytes(binaries, option("--file"), links, option("--empty"))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    compressed = gzip.compress(layer, mtime=0)
    entrypoint = "/usr/local/bin/" + os.path.basename(binaries[0])
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(out + ".tmp", "w") as archive:
        layer_digest, layer_size = blob(archive, compressed)
        config_digest, config_size = blob(archive, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = blob(archive, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
            }],
        }
        for member, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                             ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
    os.replace(out + ".tmp", out)
    print(f"{name} -> {out}: {len(compressed) / 1e6:.1f} MB compressed, {len(layer) / 1e6:.1f} MB unpacked")


if __name__ == "__main__":
    main()
