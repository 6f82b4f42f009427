"""Sort keys that order names as people number them: "9.jpg" before "10.jpg"."""
import os
import re

__all__ = ["natural_key", "file_name_key"]


def natural_key(text):
    """Sort key of ``text`` with its digit runs compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def file_name_key(path):
    """``natural_key`` of the file name alone (uploads arrive in folders of their own)."""
    return natural_key(os.path.basename(path))
