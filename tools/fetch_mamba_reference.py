#!/usr/bin/env python
"""Fetch the mamba-ssm source release that the SelM authors pinned, for the parity tests.

The authors' code (../shared/reference/selm_official, requirements.txt) builds its BCSM blocks
from ``mamba_ssm==1.1.3.post1``. That package cannot be installed here (its build compiles CUDA
kernels, and ``import mamba_ssm`` needs them), but selm_d2/official_code.py only needs two pure-Python
files of its sdist: ``mamba_ssm/modules/mamba_simple.py`` (the ``Mamba`` module) and
``mamba_ssm/ops/selective_scan_interface.py`` (``selective_scan_ref``, the PyTorch scan). It
reads them straight from the tarball that this tool puts in ``<venv>/share/selm_d2/``.

The sdist is fetched from PyPI by name and version, first with pip (``pip download --no-deps
--no-binary :all: --no-build-isolation``: pip prepares the sdist's metadata with its setup.py,
which imports torch, so the environment's own torch must be visible; MAMBA_SKIP_CUDA_BUILD=TRUE
keeps that setup.py from probing nvcc), else from the file URL that PyPI's JSON API gives for it.
Either way the file must match the sha256 pinned below (PyPI's digest of that release).

Re-running is a no-op once the file is there. Usage:
    python tools/fetch_mamba_reference.py [--dest DIR] [--force]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

# install_detectron2.py beside this script (both run as scripts, python tools/<name>.py).
from install_detectron2 import sha256_of

NAME = "mamba-ssm"
VERSION = "1.1.3.post1"
FILENAME = "mamba_ssm-1.1.3.post1.tar.gz"
SHA256 = "be9495656810846faa2297e579a83511584752b2e8fa6d780425fff66374c89d"
PYPI_JSON = "https://pypi.org/pypi/{}/json".format(NAME)
# Where selm_d2/official_code.py looks (Path(sys.prefix) / "share/selm_d2").
DEFAULT_DEST = os.path.join(sys.prefix, "share", "selm_d2")
COMMAND = "python tools/fetch_mamba_reference.py"


class FetchError(RuntimeError):
    pass


def _pip_download(tmp):
    """``pip download`` the sdist into ``tmp``; returns (path or None, pip's output)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--no-build-isolation", "--disable-pip-version-check", "-d", tmp,
        "{}=={}".format(NAME, VERSION),
    ]
    env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE", MAMBA_FORCE_BUILD="FALSE")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    path = os.path.join(tmp, FILENAME)
    return (path if proc.returncode == 0 and os.path.isfile(path) else None), proc.stdout


def _pypi_download(tmp):
    """Download the sdist from the URL PyPI's JSON API lists for it; returns its path."""
    with urllib.request.urlopen(PYPI_JSON, timeout=60) as resp:
        meta = json.load(resp)
    files = [f for f in meta.get("releases", {}).get(VERSION, [])
             if f.get("packagetype") == "sdist" and f.get("filename") == FILENAME]
    if not files:
        raise FetchError("PyPI lists no sdist {} for {}=={}".format(FILENAME, NAME, VERSION))
    info = files[0]
    if info.get("digests", {}).get("sha256") not in (None, SHA256):
        raise FetchError("PyPI's sha256 for {} ({}) differs from the pinned {}".format(
            FILENAME, info["digests"]["sha256"], SHA256))
    path = os.path.join(tmp, FILENAME)
    with urllib.request.urlopen(info["url"], timeout=120) as resp, open(path, "wb") as out:
        shutil.copyfileobj(resp, out)
    return path


def fetch(dest=DEFAULT_DEST, force=False):
    """Make ``dest/FILENAME`` exist and match SHA256. Returns (path, how)."""
    target = os.path.join(dest, FILENAME)
    if os.path.isfile(target) and not force:
        actual = sha256_of(target)
        if actual == SHA256:
            return target, "already there"
        raise FetchError("{} exists but its sha256 is {}, not {}: remove it and run {}".format(
            target, actual, SHA256, COMMAND))
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="selm_d2_mamba_") as tmp:
        path, pip_output = _pip_download(tmp)
        how = "pip download"
        if path is None:
            try:
                path = _pypi_download(tmp)
                how = "PyPI JSON API (pip download failed)"
            except Exception as exc:  # noqa: BLE001 - reported with pip's own output
                raise FetchError(
                    "could not fetch {}=={} ({}).\n`pip download --no-deps --no-binary :all: "
                    "--no-build-isolation {}=={}` said:\n{}\nand {} failed: {}\nRun `{}` again "
                    "where PyPI is reachable.".format(
                        NAME, VERSION, FILENAME, NAME, VERSION, pip_output[-2000:], PYPI_JSON,
                        exc, COMMAND)) from exc
        actual = sha256_of(path)
        if actual != SHA256:
            raise FetchError("sha256 mismatch for {} from {}: expected {}, got {}".format(
                FILENAME, how, SHA256, actual))
        partial = target + ".part"
        shutil.copyfile(path, partial)
        os.replace(partial, target)
    return target, how


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=DEFAULT_DEST,
                        help="folder for the sdist (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    try:
        path, how = fetch(args.dest, args.force)
    except FetchError as exc:
        print("fetch_mamba_reference: error: {}".format(exc), file=sys.stderr)
        return 1
    print("mamba-ssm {} reference sources: {} ({})".format(VERSION, path, how))
    return 0


if __name__ == "__main__":
    sys.exit(main())
