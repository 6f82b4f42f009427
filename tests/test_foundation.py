"""The install works: detectron2's setup runs with SelM's config and the installer's C shim,
training checkpoints and resumes, and the detectron2 installer is idempotent and fails
clearly."""
import io
import os
import subprocess
import sys
import tarfile
import types
import zipfile

import pytest
import torch
from torch import nn

from detectron2.config import configurable, get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.modeling import META_ARCH_REGISTRY

from conftest import REPO_ROOT
from selm_d2 import add_selm_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import install_detectron2  # noqa: E402


def test_default_setup_and_collect_env(tmp_path):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.freeze()
    default_setup(cfg, default_argument_parser().parse_args([]))
    assert (tmp_path / "config.yaml").is_file()
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_c_shim_answers_build_facts_and_refuses_ops():
    shim = types.ModuleType("shim")
    exec(install_detectron2.SHIM_SOURCE, shim.__dict__)
    assert shim.has_cuda() is False
    assert isinstance(shim.get_compiler_version(), str) and isinstance(shim.get_cuda_version(), str)
    with pytest.raises(AttributeError, match="without compiled ops: nms_rotated unavailable"):
        shim.nms_rotated


# ------------------------------------------------------------------ training and resume
@META_ARCH_REGISTRY.register()
class _TinyFoundationModel(nn.Module):
    """A registered meta-architecture small enough to train in milliseconds."""

    @configurable
    def __init__(self, *, channels):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = nn.GroupNorm(1, channels)
        self.head = nn.Conv2d(channels, 1, 1)

    @classmethod
    def from_config(cls, cfg):
        return {"channels": 4}

    def forward(self, batched_inputs):
        x = torch.stack([b["image"] for b in batched_inputs])
        loss = self.head(self.norm(self.conv(x))).pow(2).mean()
        return {"loss_tiny": loss}


def _tiny_trainer_cls():
    from train_net import Trainer

    class TinyTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            def batches():
                g = torch.Generator().manual_seed(0)
                while True:
                    yield [{"image": torch.randn(3, 8, 8, generator=g)} for _ in range(2)]

            return batches()

        def build_hooks(self):
            # No evaluation: the tiny model has no test set.
            return [h for h in super().build_hooks() if type(h).__name__ != "EvalHook"]

    return TinyTrainer


def _tiny_cfg(output_dir, max_iter):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "_TinyFoundationModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.BASE_LR = 1e-2
    cfg.SOLVER.STEPS = (3,)
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    return cfg


def test_train_checkpoint_resume(tmp_path):
    TinyTrainer = _tiny_trainer_cls()
    trainer = TinyTrainer(_tiny_cfg(tmp_path, max_iter=4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()
    saved_opt = trainer._trainer.optimizer.state_dict()
    saved_weight = trainer.model.conv.weight.detach().clone()
    saved_epoch = trainer.scheduler.last_epoch

    # The checkpoint loads with torch's default (weights_only=True) unpickler.
    ckpt = torch.load(tmp_path / "model_final.pth")
    assert ckpt["iteration"] == 3 and "optimizer" in ckpt["trainer"]
    assert "LRScheduler" in ckpt["trainer"]["hooks"]

    resumed = TinyTrainer(_tiny_cfg(tmp_path, max_iter=6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert torch.equal(resumed.model.conv.weight, saved_weight)
    assert resumed.scheduler.last_epoch == saved_epoch == 4
    restored = resumed._trainer.optimizer.state_dict()
    for k, state in saved_opt["state"].items():
        assert torch.equal(restored["state"][k]["exp_avg"], state["exp_avg"])
        assert restored["state"][k]["step"] == state["step"]
    resumed.train()
    assert resumed.iter == 6  # ran iterations 4 and 5, then stopped at MAX_ITER


def test_resume_reads_detectron2_main_layout(tmp_path):
    """detectron2 main nests the optimizer under "_trainer"; our Trainer reads it too."""
    TinyTrainer = _tiny_trainer_cls()
    trainer = TinyTrainer(_tiny_cfg(tmp_path, max_iter=2))
    trainer.resume_or_load(resume=False)
    trainer.train()
    state = trainer.state_dict()
    main_layout = {"iteration": state["iteration"], "hooks": state.get("hooks", {}),
                   "_trainer": {"optimizer": state["optimizer"]}}
    other = TinyTrainer(_tiny_cfg(tmp_path / "other", max_iter=2))
    other.load_state_dict(main_layout)
    assert other.iter == state["iteration"]
    assert other._trainer.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()


def test_num_gpus_beyond_visible_devices_is_a_clear_error():
    from selm_d2.engine import check_num_gpus

    check_num_gpus(1)
    with pytest.raises(SystemExit, match="--num-gpus 64 but"):
        check_num_gpus(64)


def test_unknown_config_key_names_the_key(tmp_path):
    from selm_d2.engine import setup

    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  SELM:\n    NOT_A_KEY: 3\n")
    args = default_argument_parser().parse_args(["--config-file", str(bad), "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(KeyError, match="NOT_A_KEY.*selm_d2/config.py"):
        setup(args)


# ------------------------------------------------------------------ installer
def test_installer_is_a_noop_when_detectron2_imports():
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "install_detectron2.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "already importable" in proc.stdout and "kept" in proc.stdout


def _fake_sdist(path, body=b"__version__ = '0.6'\n"):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pb1-detectron2-0.6/detectron2/__init__.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return str(path)


def test_installer_rejects_a_wrong_hash(tmp_path):
    sdist = _fake_sdist(tmp_path / "pb1-detectron2-0.6.tar.gz")
    with pytest.raises(install_detectron2.InstallError) as err:
        install_detectron2.install(sys.executable, sdist=sdist, force=True)
    message = str(err.value)
    assert "sha256 mismatch" in message and "pb1-detectron2" in message
    assert "git+https://github.com/facebookresearch/detectron2.git" in message


def test_installer_cli_reports_errors_without_traceback(tmp_path):
    sdist = _fake_sdist(tmp_path / "pb1-detectron2-0.6.tar.gz")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "install_detectron2.py"),
                           "--force", "--sdist", sdist], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "install_detectron2: error: sha256 mismatch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wheel_holds_the_package_and_the_shim(tmp_path):
    sdist = _fake_sdist(tmp_path / "sdist.tar.gz")
    wheel = install_detectron2.build_wheel(sdist, str(tmp_path))
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read("detectron2-{}.dist-info/METADATA".format(install_detectron2.WHEEL_VERSION)).decode()
    assert {"detectron2/__init__.py", "detectron2/_C.py"} <= names
    assert "Requires-Dist: Pillow>=7.1,<10" in metadata
