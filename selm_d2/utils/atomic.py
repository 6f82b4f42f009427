"""Atomic file output: a reader, or a run resumed after an interruption, finds the old file or
the whole new one, never a partial one."""
import contextlib
import os
import tempfile

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an exception, and is removed otherwise.

    The temporary file keeps ``path``'s extension, so writers that choose the format by name
    (cv2.imwrite, matplotlib, ffmpeg) write the same format, and it is in the same directory,
    so the final rename is atomic. Missing parent directories are created.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".tmp" + ext, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` atomically (see ``atomic_path``), on disk before the rename
    (a crash right after it must not leave an empty results file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
