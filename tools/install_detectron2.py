#!/usr/bin/env python
"""Install detectron2 without a compiler, a GPU or network access beyond PyPI.

detectron2's authors do not publish it on PyPI. ``pb1-detectron2==0.6`` (an sdist on PyPI)
holds the Python sources of the official v0.6 release, but its build needs the C++/CUDA sources
it lacks. This tool:

1. keeps any detectron2 that already imports (e.g. one installed from git on a GPU machine);
2. otherwise downloads the pinned sdist with pip, checks its sha256, builds a pure-Python
   wheel from its ``detectron2/`` package plus a ``detectron2/_C.py`` shim, and installs it.

Re-running is a no-op. Usage: ``python tools/install_detectron2.py [--force] [--sdist FILE]``.
"""
import argparse
import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_VERSION = "0.6+selmd2.purepython"

# The runtime dependencies of detectron2 v0.6 (its setup.py), minus the ones only its
# LazyConfig saving (black) or dev tools need. Pillow<10: v0.6 evaluates Image.LINEAR at import.
REQUIRES = [
    "Pillow>=7.1,<10",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

GIT_ALTERNATIVE = (
    "On a machine with internet access and a CUDA toolchain, install the official sources "
    "instead: pip install 'git+https://github.com/facebookresearch/detectron2.git'"
)

# detectron2 v0.6 imports `from detectron2 import _C` at module load in layers/ and
# evaluation/fast_eval_api.py, and collect_env asks it for build facts. Everything else
# this project uses is pure Python, so the shim answers those and refuses real ops clearly.
SHIM_SOURCE = '''"""Stand-in for detectron2's compiled extension (installed by SelM-D2's
tools/install_detectron2.py). The pure-Python parts of detectron2 work; compiled ops
(deformable conv, rotated boxes, fast COCO eval) are unavailable."""


def get_compiler_version():
    return "none (pure-Python install, no compiled ops)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        "detectron2 installed without compiled ops: {} unavailable. Install detectron2 from "
        "source (pip install 'git+https://github.com/facebookresearch/detectron2.git') "
        "to use it.".format(name)
    )
'''


class InstallError(RuntimeError):
    pass


def detectron2_importable(python):
    """True when ``python`` can import detectron2 (checked in a child process)."""
    proc = subprocess.run(
        [python, "-c", "import detectron2, detectron2.config"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.returncode == 0


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(python, dest):
    """Fetch the pinned sdist with pip into ``dest``; returns its path."""
    # --no-build-isolation: pip prepares metadata with the sdist's setup.py, which imports
    # torch; the target environment already has it, an isolated one would not.
    cmd = [
        python, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
        "--dest", dest, "{}=={}".format(SDIST_NAME, SDIST_VERSION),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    candidates = [f for f in os.listdir(dest) if f.startswith(SDIST_NAME) and f.endswith(".tar.gz")]
    if proc.returncode != 0 or not candidates:
        raise InstallError(
            "could not download {}=={} with pip (is PyPI reachable, and is torch installed in "
            "{}?).\npip said:\n{}\n{}".format(
                SDIST_NAME, SDIST_VERSION, python, proc.stdout[-2000:], GIT_ALTERNATIVE
            )
        )
    return os.path.join(dest, candidates[0])


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [arcname, "sha256=" + digest, str(len(data))]


def build_wheel(sdist_path, out_dir):
    """Build ``detectron2-<WHEEL_VERSION>-py3-none-any.whl`` from the sdist's Python package."""
    files = {}
    with tarfile.open(sdist_path, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) > 2 and parts[1] == "detectron2":
                files["/".join(parts[1:])] = tar.extractfile(member).read()
    if "detectron2/__init__.py" not in files:
        raise InstallError("{} holds no detectron2/ package; {}".format(sdist_path, GIT_ALTERNATIVE))
    files["detectron2/_C.py"] = SHIM_SOURCE.encode()

    dist_info = "detectron2-{}.dist-info".format(WHEEL_VERSION)
    metadata = ["Metadata-Version: 2.1", "Name: detectron2", "Version: " + WHEEL_VERSION,
                "Summary: detectron2 v0.6 Python sources (from {}=={}) without compiled ops".format(
                    SDIST_NAME, SDIST_VERSION)]
    metadata += ["Requires-Dist: " + r for r in REQUIRES]
    files[dist_info + "/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[dist_info + "/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: selm_d2-install\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    files[dist_info + "/top_level.txt"] = b"detectron2\n"

    wheel_path = os.path.join(out_dir, "detectron2-{}-py3-none-any.whl".format(WHEEL_VERSION))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as whl:
        for arcname in sorted(files):
            whl.writestr(arcname, files[arcname])
            writer.writerow(_record_line(arcname, files[arcname]))
        writer.writerow([dist_info + "/RECORD", "", ""])
        whl.writestr(dist_info + "/RECORD", record.getvalue())
    return wheel_path


def install(python, sdist=None, force=False):
    """Make detectron2 importable in ``python``'s environment. Returns a one-line status."""
    if not force and detectron2_importable(python):
        return "detectron2 already importable in {}: kept".format(python)
    with tempfile.TemporaryDirectory(prefix="selm_d2_d2_") as tmp:
        sdist_path = sdist or download_sdist(python, tmp)
        actual = sha256_of(sdist_path)
        if actual != SDIST_SHA256:
            raise InstallError(
                "sha256 mismatch for {} ({}=={}): expected {}, got {}. The file is not the "
                "release this project pins; remove it and retry. {}".format(
                    sdist_path, SDIST_NAME, SDIST_VERSION, SDIST_SHA256, actual, GIT_ALTERNATIVE
                )
            )
        wheel = build_wheel(sdist_path, tmp)
        proc = subprocess.run(
            [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", wheel],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if proc.returncode != 0:
            raise InstallError("pip could not install {}:\n{}".format(wheel, proc.stdout[-2000:]))
        # Dependencies separately, so nothing re-resolves torch.
        proc = subprocess.run(
            [python, "-m", "pip", "install", "-q"] + REQUIRES,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if proc.returncode != 0:
            raise InstallError("pip could not install detectron2's dependencies:\n" + proc.stdout[-2000:])
    if not detectron2_importable(python):
        raise InstallError("detectron2 was installed but does not import in {}".format(python))
    return "detectron2 {} installed into {}".format(WHEEL_VERSION, python)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument("--sdist", help="use this local {} sdist instead of downloading".format(SDIST_NAME))
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    args = parser.parse_args(argv)
    try:
        print(install(args.python, sdist=args.sdist, force=args.force))
    except InstallError as e:
        print("install_detectron2: error: {}".format(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
