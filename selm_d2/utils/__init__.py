from .atomic import atomic_path, write_text_atomic
from .natural_sort import file_name_key, natural_key

__all__ = ["atomic_path", "write_text_atomic", "file_name_key", "natural_key"]
