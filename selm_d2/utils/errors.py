"""Errors that explain a mistake in the user's config, data or files.

The command-line entry points print these as one message and exit with status 2;
``--verbose`` (or ``SELM_D2_DEBUG=1``) shows the traceback. Each also derives from the builtin
error a caller would catch (ValueError, KeyError, FileNotFoundError).
"""
import contextlib
import os
import sys

__all__ = ["UserInputError", "ConfigError", "ConfigKeyError", "DataError", "MissingFileError",
           "USER_ERROR_EXIT_CODE", "exit_on_user_error"]

USER_ERROR_EXIT_CODE = 2


class UserInputError(Exception):
    """A mistake SelM-D2 detected in what the user gave it; the message says how to fix it."""


class ConfigError(UserInputError, ValueError):
    """A config value that cannot work (with the data, or with another value)."""


class ConfigKeyError(UserInputError, KeyError):
    """An unknown or renamed config key."""

    def __str__(self):
        # KeyError's str() is the repr of its argument: quotes and escaped newlines.
        return str(self.args[0]) if self.args else ""


class DataError(UserInputError, ValueError):
    """A dataset, annotation, audio or weight file whose content cannot be used."""


class MissingFileError(UserInputError, FileNotFoundError):
    """A file or folder that the config or the dataset layout names does not exist."""


@contextlib.contextmanager
def exit_on_user_error(verbose=False):
    """Turn a :class:`UserInputError` into its message on stderr and exit status 2.

    Other exceptions (bugs) keep their traceback; ``verbose`` or the environment variable
    ``SELM_D2_DEBUG=1`` keeps it for user errors too.
    """
    try:
        yield
    except UserInputError as e:
        if verbose or os.environ.get("SELM_D2_DEBUG", "") not in ("", "0"):
            raise
        print("ERROR: {}\n(run with --verbose or SELM_D2_DEBUG=1 for the traceback)".format(e),
              file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
