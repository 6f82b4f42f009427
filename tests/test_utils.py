import os
import stat

import pytest

from selm_d2.utils import atomic_path, file_name_key, natural_key, write_text_atomic


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_text_atomic(str(path), "old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            # Same folder and extension: writers that pick the format by name keep working.
            assert os.path.dirname(tmp) == str(path.parent) and tmp.endswith(".json")
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    write_text_atomic(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["results.json"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_natural_keys_compare_numbers_as_numbers():
    names = ["clip/10.png", "clip/9.png", "clip/1.png"]
    assert sorted(names, key=natural_key) == ["clip/1.png", "clip/9.png", "clip/10.png"]
    # Uploads live in folders of their own: only the file name orders them.
    uploads = ["/tmp/b/2.png", "/tmp/a/10.png"]
    assert sorted(uploads, key=file_name_key) == ["/tmp/b/2.png", "/tmp/a/10.png"]
    assert sorted(uploads, key=natural_key) == ["/tmp/a/10.png", "/tmp/b/2.png"]
