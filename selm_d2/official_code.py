"""The SelM authors' released code, built on CPU beside SelM-D2 (parity tests, benchmark).

The authors' code is looked for at ``$SELM_OFFICIAL_ROOT``, else at
``../shared/reference/selm_official`` from the repository root (read only, never copied into
the project). Each of its three task
folders (``avs_s4``, ``avs_ms3``, ``avss``) has its own ``model/``, ``loss.py``, ``utils/`` and
``torchvggish/``, imported with absolute names (``from model.resnet import B2_ResNet``) that
clash between the folders and with other packages; the code hard-codes CUDA and imports
``from mamba_ssm import Mamba``. This module loads it as follows:

* Each task's files run as modules under a prefix of their own (``selm_official_avs_ms3.model.
  decoder``, ``selm_official_avss.loss``, ...), through an import finder that is on
  ``sys.meta_path`` only while :func:`load_task` runs. The loader rewrites each file's source
  before compiling it (line numbers unchanged, so tracebacks point at the right lines):

  - the task-folder absolute imports (``from model...``, ``from loss ...``, ``from utils...``,
    ``from torchvggish...``) become imports of that task's prefixed modules, so three tasks
    never share a module and no bare ``model``/``loss``/``utils``/``torchvggish`` entry ever
    enters ``sys.modules``; ``from mamba_ssm import Mamba`` imports :data:`MambaRef` (below);
  - ``device='cuda'`` becomes ``device='cpu'``, ``.cuda()`` is dropped, and
    ``'cuda' if torch.cuda.is_available() else 'cpu'`` becomes ``'cpu'``;
  - pvt.py's ``from timm.models.registry import register_model`` becomes an identity
    decorator: the authors register their own ``pvt_v2_b0..b5`` under timm's names, which would
    otherwise replace timm's PVT-v2 in ``timm.create_model`` for the rest of the process.

* mamba-ssm cannot be installed without CUDA, so :data:`MambaRef` is mamba-ssm's own ``Mamba``
  (``mamba_ssm/modules/mamba_simple.py`` of the 1.1.3.post1 sdist that the authors pin, read
  from the tarball that ``tools/fetch_mamba_reference.py`` puts in ``<venv>/share/selm_d2``),
  forced onto its pure-PyTorch path: ``use_fast_path=False``, no ``causal_conv1d_fn`` (so it
  runs ``self.conv1d``), and ``selective_scan_fn`` replaced by ``selective_scan_ref`` of
  ``mamba_ssm/ops/selective_scan_interface.py``. The two files run unmodified; the CUDA
  extension imports they make (``selective_scan_cuda``, ``causal_conv1d``,
  ``causal_conv1d_cuda``, the triton kernels) are answered by stubs only while they execute.

A missing folder or sdist raises :class:`OfficialCodeMissing`.

API: :data:`OFFICIAL_ROOT`, :func:`require_official`, :func:`load_task`, :func:`build_official`,
:func:`build_official_vggish`, :func:`require_mamba_sdist`, :func:`load_mamba`, and the lazily
loaded :data:`MambaRef` / :data:`selective_scan_ref` (the tarball is looked up on first
access).

Models are built with ``config=None, training=False`` (no weight file is read) and returned in
eval mode; the authors' constructors assign ``self.training = training`` themselves, so call
``.train()`` on the result to train.
"""
import contextlib
import glob
import importlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tarfile
import threading
import types
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_ROOT = Path(os.environ.get("SELM_OFFICIAL_ROOT")
                     or REPO_ROOT.parent / "shared" / "reference" / "selm_official")

TASKS = ("avs_s4", "avs_ms3", "avss")
BACKBONES = ("R50", "PVT")

# The pinned mamba-ssm release (selm_official/requirements.txt) and where the install puts it.
MAMBA_VERSION = "1.1.3.post1"
MAMBA_SDIST_DIR = Path(sys.prefix) / "share" / "selm_d2"
FETCH_COMMAND = "python tools/fetch_mamba_reference.py"

# Attribute of load_task()'s namespace -> module path inside a task folder.
_TASK_MODULES = {
    "SelM": "model.SelM",
    "DAM": "model.DAM",
    "BCSM": "model.BCSM",
    "decoder": "model.decoder",
    "pvt": "model.pvt",
    "resnet": "model.resnet",
    "loss": "loss",
    "utility": "utils.utility",
    "vggish": "torchvggish.vggish",
}
_EXTRA_MODULES = {"avss": {"color_metrics": "utils.compute_color_metrics"}}

# Top-level names that the task folders import absolutely.
_TASK_TOPLEVEL = ("model", "loss", "utils", "torchvggish")
# The private package that stands in for mamba_ssm in the rewritten sources.
_MAMBA_PKG = "selm_official_mamba_ssm"

_LOCK = threading.RLock()
_TASK_CACHE = {}
_MAMBA = None


class OfficialCodeMissing(FileNotFoundError):
    """The authors' code or the mamba-ssm sdist it needs is not where it is looked for."""


def require_official():
    """OFFICIAL_ROOT; raises OfficialCodeMissing where it does not exist."""
    if OFFICIAL_ROOT.is_dir():
        return OFFICIAL_ROOT
    raise OfficialCodeMissing(
        "the SelM authors' code is not at {} (../shared/reference/selm_official from the "
        "repository root, or set SELM_OFFICIAL_ROOT)".format(OFFICIAL_ROOT))


# --------------------------------------------------------------------------- mamba-ssm

def require_mamba_sdist():
    """Path of the mamba-ssm sdist in <venv>/share/selm_d2; raises OfficialCodeMissing."""
    exact = MAMBA_SDIST_DIR / "mamba_ssm-{}.tar.gz".format(MAMBA_VERSION)
    if exact.is_file():
        return exact
    found = sorted(glob.glob(str(MAMBA_SDIST_DIR / "mamba_ssm-*.tar.gz")))
    if found:
        return Path(found[-1])
    raise OfficialCodeMissing(
        "the mamba-ssm {} sdist is not in {} (mamba_ssm-*.tar.gz); run `{}` (make install runs "
        "it)".format(MAMBA_VERSION, MAMBA_SDIST_DIR, FETCH_COMMAND))


def _read_members(tarball, suffixes):
    out = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            for suffix in suffixes:
                if member.isfile() and member.name.endswith("/" + suffix):
                    out[suffix] = (member.name, tar.extractfile(member).read().decode("utf-8"))
    missing = [s for s in suffixes if s not in out]
    if missing:
        raise RuntimeError("{} lacks {}".format(tarball, ", ".join(missing)))
    return out


def _new_module(name, package=False, doc=None):
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
        module.__spec__.submodule_search_locations = []
    module.__package__ = name if package else name.rpartition(".")[0]
    return module


@contextlib.contextmanager
def _quiet_imports():
    """Silence the deprecation warnings that the 2023 sources raise when imported with today's
    torch and timm (``torch.cuda.amp.custom_fwd``, ``timm.models.layers``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class _TemporaryModules:
    """Put modules into sys.modules for a while, restoring what was there before."""

    def __init__(self, modules):
        self.modules = modules
        self.saved = {}

    def __enter__(self):
        for name, module in self.modules.items():
            self.saved[name] = sys.modules.get(name)
            sys.modules[name] = module
        return self

    def __exit__(self, *exc):
        for name in self.modules:
            if self.saved[name] is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = self.saved[name]
        return False


def load_mamba():
    """mamba-ssm's Mamba and selective_scan_ref (CPU), as the module ``selm_official_mamba_ssm``.

    Its attributes: ``Mamba`` (= ``MambaRef``), ``MambaRef``, ``selective_scan_ref``,
    ``mamba_simple`` and ``selective_scan_interface`` (the sdist's modules), ``sdist``,
    ``__version__``.
    """
    global _MAMBA
    with _LOCK:
        if _MAMBA is not None:
            return _MAMBA
        tarball = require_mamba_sdist()
        ssi_file = "mamba_ssm/ops/selective_scan_interface.py"
        simple_file = "mamba_ssm/modules/mamba_simple.py"
        sources = _read_members(tarball, (ssi_file, simple_file))

        pkg = _new_module(_MAMBA_PKG, package=True,
                          doc="mamba-ssm's Mamba on CPU (pure-PyTorch path), from " + str(tarball))
        ops = _new_module(_MAMBA_PKG + ".ops", package=True)
        modules_pkg = _new_module(_MAMBA_PKG + ".modules", package=True)
        ssi = _new_module(_MAMBA_PKG + ".ops.selective_scan_interface")
        simple = _new_module(_MAMBA_PKG + ".modules.mamba_simple")
        for module, key in ((ssi, ssi_file), (simple, simple_file)):
            module.__file__ = "{}/{}".format(tarball, sources[key][0])

        # The CUDA extensions that the two files import: stubs, present only while they run.
        causal_conv1d = _new_module("causal_conv1d", doc="stub: no causal-conv1d kernels")
        causal_conv1d.causal_conv1d_fn = None
        causal_conv1d.causal_conv1d_update = None
        stubs = {
            "causal_conv1d": causal_conv1d,
            "causal_conv1d_cuda": _new_module("causal_conv1d_cuda", doc="stub"),
            "selective_scan_cuda": _new_module("selective_scan_cuda", doc="stub"),
            # A package with an empty __path__: `mamba_ssm.ops.triton.*` raises ImportError,
            # which mamba_simple catches (selective_state_update / RMSNorm = None).
            "mamba_ssm": pkg,
            "mamba_ssm.ops": ops,
            "mamba_ssm.ops.selective_scan_interface": ssi,
            "mamba_ssm.modules": modules_pkg,
        }
        with _TemporaryModules(stubs), _quiet_imports():
            for module, key in ((ssi, ssi_file), (simple, simple_file)):
                code = compile(sources[key][1], module.__file__, "exec", dont_inherit=True)
                exec(code, module.__dict__)

        # The pure-PyTorch path: the reference scan, and self.conv1d instead of the kernel.
        simple.selective_scan_fn = ssi.selective_scan_ref
        simple.causal_conv1d_fn = None
        simple.causal_conv1d_update = None

        version = tarball.name[len("mamba_ssm-"):-len(".tar.gz")]

        class MambaRef(simple.Mamba):
            """mamba-ssm {}'s ``Mamba`` on its pure-PyTorch path (use_fast_path=False,
            self.conv1d, selective_scan_ref)."""

            def __init__(self, *args, **kwargs):
                kwargs["use_fast_path"] = False
                super().__init__(*args, **kwargs)
                self.use_fast_path = False

        MambaRef.__doc__ = MambaRef.__doc__.format(version)
        MambaRef.__module__ = _MAMBA_PKG
        MambaRef.__qualname__ = "MambaRef"

        ops.selective_scan_interface = ssi
        modules_pkg.mamba_simple = simple
        pkg.ops, pkg.modules = ops, modules_pkg
        pkg.selective_scan_interface, pkg.mamba_simple = ssi, simple
        pkg.Mamba = pkg.MambaRef = MambaRef
        pkg.selective_scan_ref = ssi.selective_scan_ref
        pkg.sdist = tarball
        pkg.__version__ = version
        for module in (pkg, ops, modules_pkg, ssi, simple):
            sys.modules[module.__name__] = module
        _MAMBA = pkg
        return pkg


def __getattr__(name):
    # `from official import MambaRef` / `official.selective_scan_ref`: load on first use.
    if name in ("MambaRef", "selective_scan_ref"):
        return getattr(load_mamba(), name)
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


# --------------------------------------------------------------------------- task loader

_CUDA_PATCHES = [
    (re.compile(r"""device\s*=\s*(['"])cuda\1"""), "device='cpu'"),
    (re.compile(r"\.cuda\(\)"), ""),
    (re.compile(r"""(['"])cuda\1\s+if\s+torch\.cuda\.is_available\(\)\s+else\s+(['"])cpu\2"""),
     "'cpu'"),
]
_FROM_IMPORT = re.compile(r"^(\s*)from\s+({})(?=[\s.])".format("|".join(_TASK_TOPLEVEL)),
                          re.MULTILINE)
_BARE_IMPORT = re.compile(r"^\s*import\s+({})\b".format("|".join(_TASK_TOPLEVEL)), re.MULTILINE)
_MAMBA_IMPORT = re.compile(r"^(\s*)from\s+mamba_ssm\s+import\s", re.MULTILINE)
_REGISTER_MODEL = re.compile(r"^from\s+timm\.models\.registry\s+import\s+register_model\s*$",
                             re.MULTILINE)
_LEFTOVER_CUDA = re.compile(r"""\.cuda\(|device\s*=\s*(['"])cuda\1""")


def _task_prefix(task):
    return "selm_official_" + task


def patch_source(source, task, filename="<source>"):
    """The authors' source as load_task() runs it (see the module docstring)."""
    prefix = _task_prefix(task)
    for pattern, repl in _CUDA_PATCHES:
        source = pattern.sub(repl, source)
    source = _FROM_IMPORT.sub(lambda m: "{}from {}.{}".format(m.group(1), prefix, m.group(2)),
                              source)
    source = _MAMBA_IMPORT.sub(lambda m: "{}from {} import ".format(m.group(1), _MAMBA_PKG),
                               source)
    source = _REGISTER_MODEL.sub("register_model = lambda fn: fn  # selm_d2 tests: keep timm's "
                                 "registry as it is", source)
    code_lines = [line for line in source.splitlines() if not line.lstrip().startswith("#")]
    leftovers = [line for line in code_lines if _LEFTOVER_CUDA.search(line)]
    bare = [m.group(0) for m in _BARE_IMPORT.finditer(source)]
    if leftovers or bare:
        raise RuntimeError("selm_d2/official_code.py cannot rewrite {} for CPU: {}".format(
            filename, leftovers + bare))
    return source


class _PatchedSourceLoader(importlib.abc.SourceLoader):
    """Loads one task-folder file with its source rewritten by patch_source()."""

    def __init__(self, task, path):
        self.task = task
        self.path = path  # None for a folder without __init__.py

    def get_filename(self, fullname):
        return self.path if self.path is not None else "<{} (no __init__.py)>".format(fullname)

    def get_data(self, path):
        if self.path is None:
            return b""
        with open(path, "r", encoding="utf-8") as f:
            source = f.read()
        return patch_source(source, self.task, path).encode("utf-8")

    def path_stats(self, path):
        raise OSError("no bytecode cache for rewritten sources")

    def is_package(self, fullname):
        return self.path is None or os.path.basename(self.path) == "__init__.py"


class _TaskFinder(importlib.abc.MetaPathFinder):
    """Finds ``selm_official_<task>[.X[.Y]]`` in the task's folder; nothing else."""

    def __init__(self, task, root):
        self.task = task
        self.prefix = _task_prefix(task)
        self.root = Path(root)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.prefix and not fullname.startswith(self.prefix + "."):
            return None
        parts = fullname.split(".")[1:]
        base = self.root.joinpath(*parts)
        if base.is_dir():
            init = base / "__init__.py"
            loader = _PatchedSourceLoader(self.task, str(init) if init.is_file() else None)
            spec = importlib.machinery.ModuleSpec(fullname, loader, origin=loader.path,
                                                  is_package=True)
            spec.submodule_search_locations = [str(base)]
            spec.has_location = loader.path is not None
            return spec
        source = base.with_suffix(".py")
        if parts and source.is_file():
            loader = _PatchedSourceLoader(self.task, str(source))
            spec = importlib.machinery.ModuleSpec(fullname, loader, origin=str(source))
            spec.has_location = True
            return spec
        return None


def load_task(task):
    """The authors' modules of one task folder, on CPU, as a SimpleNamespace (cached).

    Attributes: SelM, DAM, BCSM, decoder, pvt, resnet (model/), loss, utility (utils/utility.py),
    vggish (torchvggish/vggish.py), avss also color_metrics (utils/compute_color_metrics.py);
    plus task, root (the task folder) and prefix (the modules' package name).
    """
    if task not in TASKS:
        raise ValueError("task must be one of {}, not {!r}".format(TASKS, task))
    with _LOCK:
        if task in _TASK_CACHE:
            return _TASK_CACHE[task]
        root = require_official() / task
        if not root.is_dir():
            raise OfficialCodeMissing("{} has no {}/ folder".format(OFFICIAL_ROOT, task))
        load_mamba()
        prefix = _task_prefix(task)
        wanted = dict(_TASK_MODULES, **_EXTRA_MODULES.get(task, {}))
        before = {name: sys.modules.get(name) for name in _TASK_TOPLEVEL}
        finder = _TaskFinder(task, root)
        sys.meta_path.insert(0, finder)
        try:
            with _quiet_imports():
                loaded = {attr: importlib.import_module("{}.{}".format(prefix, rel))
                          for attr, rel in wanted.items()}
        except BaseException:
            for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
                del sys.modules[name]
            raise
        finally:
            sys.meta_path.remove(finder)
            # Nothing here adds bare names; make sure none leaks (or is lost) all the same.
            for name, module in before.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
        ns = types.SimpleNamespace(task=task, root=root, prefix=prefix, **loaded)
        _TASK_CACHE[task] = ns
        return ns


def build_official(task, backbone, seed=0):
    """The authors' SelM_R50 / SelM_PVT of ``task`` on CPU, built after torch.manual_seed(seed),
    with ``config=None, training=False`` (no weight file), in eval mode (``.train()`` to train).

    Input sizes their decoders are built for: S4 R50 224, S4 PVT 448, MS3 448, AVSS 224.
    """
    import torch

    if backbone not in BACKBONES:
        raise ValueError("backbone must be one of {}, not {!r}".format(BACKBONES, backbone))
    mods = load_task(task)
    cls = mods.SelM.SelM_R50 if backbone == "R50" else mods.SelM.SelM_PVT
    torch.manual_seed(seed)
    model = cls(config=None, training=False)
    return model.eval()


def build_official_vggish(task, seed=0):
    """The task's ``torchvggish.vggish.VGG(make_layers())`` (random weights), in eval mode."""
    import torch

    vggish = load_task(task).vggish
    torch.manual_seed(seed)
    return vggish.VGG(vggish.make_layers()).eval()
