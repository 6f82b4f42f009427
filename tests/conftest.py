import os
import sys

import pytest
import torch

# Tests run on 2 shared CPU cores: one thread each avoids oversubscription.
torch.set_num_threads(1)

SHARED_META = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "avsbench_meta")


@pytest.fixture
def avsbench_meta_dir():
    """The genuine AVSBench metadata files (../shared/data/avsbench_meta)."""
    path = os.path.abspath(SHARED_META)
    if not os.path.isdir(path):
        pytest.skip("genuine AVSBench metadata not found at {} (shared/ is beside the checkout "
                    "in CI and developer machines)".format(path))
    return path

def synth_ms3_tree(tmp_path_factory, name, train, test, seed):
    """A tiny AVS-Synth tree in the MS3 layout (32x32 frames); returns its root."""
    from selm_d2.data.synthetic import generate

    root = str(tmp_path_factory.mktemp(name))
    generate(root, layouts=("ms3",), clips_per_split={"train": train, "val": 0, "test": test},
             size=32, seed=seed, progress=False)
    return root


def randomise(module, seed, scale):
    """Move every parameter of ``module`` off its initialisation (LayerNorm 1/0, Mamba's
    D = 1, ...) by seeded noise of std ``scale``; returns the module."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn_like(param))
    return module


# train_net.py and demo/ live at the repository root, as in detectron2 projects.
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


# SelM-D2 on CPU without dropout or stochastic depth, as the parity tests run it.
PARITY_OPTS = ["MODEL.DEVICE", "cpu",
               "MODEL.SELM.CLEVER.AUDIO_DROPOUT", "0.0",
               "MODEL.SELM.CLEVER.GROUPING_DROPOUT", "[0.0, 0.0, 0.0]",
               "MODEL.PVT.DROP_PATH_RATE", "0.0"]


def official_clip(pair, seed, dtype=torch.float32):
    """A clip for both sides of an OfficialPair: AVSS as a 7-second clip padded to 10 frames
    whose second frame has no label, S4 with its first frame annotated only (as S4 training
    clips are)."""
    if pair.task == "avss":
        return pair.random_clip(seed, valid_frames=7, unannotated=[1], dtype=dtype)
    if pair.task == "s4":
        return pair.random_clip(seed, unannotated=range(1, pair.num_frames), dtype=dtype)
    return pair.random_clip(seed, dtype=dtype)


def official_cases():
    from selm_d2.official import OFFICIAL_CONFIGS

    return sorted(OFFICIAL_CONFIGS)


def official_case_id(case):
    """("s4", "R50") -> "s4-R50", the test id that -k selects a released model by."""
    return "{}-{}".format(*case)


@pytest.fixture(scope="module", params=official_cases(), ids=official_case_id)
def pair(request):
    """The authors' model of one released (task, backbone) and SelM-D2 with its weights, without
    dropout or stochastic depth. Module scope: a file's tests of one case run together and build
    the pair once (a PVT-v2-b5 pair holds about 1.5 GB of weights). A test module's
    ``skip_case(case)`` may return a reason to skip a case before it is built."""
    import official
    from selm_d2.official_pair import OfficialPair

    skip_case = getattr(request.module, "skip_case", None)
    reason = skip_case(request.param) if skip_case else None
    if reason:
        pytest.skip(reason)
    official.require_official()
    return OfficialPair(*request.param, opts=PARITY_OPTS)


def pytest_collection_modifyitems(items):
    # xdist's --dist loadfile hands out files in collection order; the longest file (one
    # worker's share) goes first, so that the other worker takes the rest meanwhile.
    items.sort(key=lambda item: item.module.__name__ != "test_official_training_parity")
