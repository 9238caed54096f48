"""Re-vendor the .proto files from the npm package that ships Envoy's API.

The npm registry's ``@grpc/grpc-js-xds`` package carries snapshots of
envoyproxy/data-plane-api, cncf/xds, protoc-gen-validate and googleapis under
``deps/``. This script fetches one pinned version with ``npm pack``, checks its
sha256, and copies ``external_auth.proto``, ``attribute_context.proto`` and
everything they import (transitively, except protobuf's own well-known types).

Usage: python proto/vendor.py   (needs npm; then run `make proto`)
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@grpc/grpc-js-xds@1.14.1"
SHA256 = "fd27db4119c139d5b59e8fe99d109bed04bff491302743ae3bf096667105c607"
ROOTS = (
    "envoy/service/auth/v3/external_auth.proto",
    "envoy/service/auth/v3/attribute_context.proto",
)
SOURCES = ("envoy-api", "xds", "protoc-gen-validate", "googleapis")
HERE = Path(__file__).resolve().parent
_IMPORT = re.compile(r'^import (?:public )?"([^"]+)";', re.M)


def closure(deps: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in found or name.startswith("google/protobuf/"):
            continue
        for source in SOURCES:
            if (deps / source / name).is_file():
                found[name] = deps / source / name
                break
        else:
            raise SystemExit(f"{name} is imported but not in {PACKAGE}")
        todo.extend(_IMPORT.findall(found[name].read_text()))
    return found


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(  # noqa: S603 - fixed arguments
            ["npm", "pack", PACKAGE, "--pack-destination", tmp], check=True  # noqa: S607
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{PACKAGE}: sha256 {digest} != pinned {SHA256}")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        for name, src in sorted(closure(Path(tmp) / "package" / "deps").items()):
            dst = HERE / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            print(name)


if __name__ == "__main__":
    main()
