"""The errors snapper raises on purpose, in two branches.

* :class:`UserInputError`: something the user can fix (a bad file, option, box or model
  reference). Its message names the file, option or row and says what is wrong; the CLI
  prints it as one line and exits 2, the servers answer 4xx with it.
* every other :class:`SnapperError` (and anything else raised): a bug or a broken
  environment. The CLI lets it raise, with its traceback: a bug must look like a bug.

Each class keeps the builtin base it had before the hierarchy (``ValueError``, ``OSError``,
...) so that code catching those still works.
"""

from __future__ import annotations


class SnapperError(Exception):
    """Every error snapper raises on purpose."""


class UserInputError(SnapperError):
    """Input the user can fix; the message is one line naming what is wrong."""


class BadFileError(UserInputError):
    """An input file (image, annotation file, shard, manifest) that cannot be used: names the file."""


class BadOptionError(UserInputError):
    """An option or configuration value out of its range or of the wrong type: names the key."""


class BadBoxError(UserInputError, ValueError):
    """A rough box that cannot be snapped (non-finite, empty, outside its image): names the box."""


class BadModelError(UserInputError):
    """A checkpoint or model reference that does not give a usable model: names it."""


class ConfigError(BadOptionError, ValueError):
    """A configuration key or value that does not fit the dataclass (names the key)."""


class BadPathError(BadFileError, OSError):
    """A file or folder the user named that cannot be used as asked (permissions, a file
    where a folder is needed, ...): names it and says why."""


class InputNotFoundError(BadPathError, FileNotFoundError):
    """A file or folder the user named that does not exist: names it."""


class OutputExistsError(BadPathError, FileExistsError):
    """An output path that holds something snapper refuses to overwrite: names it."""


def file_error(path: object, e: OSError) -> BadPathError:
    """An ``OSError`` from opening a user-given path as one line naming it (``raise
    file_error(path, e) from e``): the CLI prints user errors as one line, ``open``'s own are
    not user errors (they could as well come from a bug) and would keep their traceback."""
    if isinstance(e, FileNotFoundError):
        return InputNotFoundError(f"{path}: no such file or folder")
    return BadPathError(f"{path}: {e.strerror or e}")
