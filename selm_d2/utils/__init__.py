from .atomic import atomic_path, write_text_atomic
from .errors import (
    USER_ERROR_EXIT_CODE,
    ConfigError,
    ConfigKeyError,
    DataError,
    MissingFileError,
    UserInputError,
    exit_on_user_error,
)
from .memory import cpu_allocation_peak_mb
from .natural_sort import file_name_key, natural_key

__all__ = ["atomic_path", "write_text_atomic", "file_name_key", "natural_key", "UserInputError",
           "ConfigError", "ConfigKeyError", "DataError", "MissingFileError", "USER_ERROR_EXIT_CODE",
           "exit_on_user_error", "cpu_allocation_peak_mb"]
