"""A config or data mistake ends a command with its message and exit status 2; ``--verbose``
(or SELM_D2_DEBUG=1) shows the traceback; a bug keeps its traceback."""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from selm_d2.utils import ConfigError, MissingFileError, UserInputError, exit_on_user_error

# configs/synth/avss.yaml predicts 6 classes; AVSBench-semantic has 70. The check runs before
# any data is read, so the command fails the same way without the dataset.
CLASS_MISMATCH = ["train_net.py", "--config-file", "configs/synth/avss.yaml", "--eval-only",
                  "DATASETS.TEST", "('avss_test',)", "MODEL.DEVICE", "cpu"]


def test_user_error_becomes_message_and_status_2(capsys, monkeypatch):
    monkeypatch.delenv("SELM_D2_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        with exit_on_user_error():
            raise MissingFileError("frames/0.png not found: run check_avsbench")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: frames/0.png not found: run check_avsbench\n")
    assert "--verbose" in err


@pytest.mark.parametrize("verbose,debug", [(True, None), (False, "1")])
def test_verbose_or_debug_variable_keeps_the_exception(monkeypatch, verbose, debug):
    if debug is None:
        monkeypatch.delenv("SELM_D2_DEBUG", raising=False)
    else:
        monkeypatch.setenv("SELM_D2_DEBUG", debug)
    with pytest.raises(ConfigError, match="NUM_CLASSES"):
        with exit_on_user_error(verbose=verbose):
            raise ConfigError("MODEL.SELM.NUM_CLASSES is 6 but ...")


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv("SELM_D2_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        with exit_on_user_error():
            1 / 0


def test_user_errors_are_also_the_builtin_errors_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(ConfigError, UserInputError)


def _run(args):
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO_ROOT, "no_datasets_here"))
    env.pop("SELM_D2_DEBUG", None)
    return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_train_net_class_count_mismatch_is_one_message():
    result = _run(CLASS_MISMATCH)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "ERROR: MODEL.SELM.NUM_CLASSES is 6" in result.stderr
    assert "set MODEL.SELM.NUM_CLASSES 70" in result.stderr


@pytest.mark.slow
def test_train_net_verbose_shows_the_traceback():
    result = _run(CLASS_MISMATCH[:1] + ["--verbose"] + CLASS_MISMATCH[1:])
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


@pytest.mark.slow
def test_unknown_config_key_is_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: {}\nMODEL:\n  SELM:\n    NOT_A_KEY: 3\n".format(
        os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")))
    result = _run(["train_net.py", "--config-file", str(bad), "OUTPUT_DIR", str(tmp_path)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "NOT_A_KEY" in result.stderr and "selm_d2/config.py" in result.stderr
