"""What every command shares: ``--set`` overrides checked against the config dataclasses
before any work starts, one-line errors with exit status 2, and logging setup."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from snapper.config import MAX_BUFFER_RATIO
from snapper.errors import ConfigError, UserInputError
from snapper.lineage import synthetic_warning
from snapper.overrides import apply_overrides

T = TypeVar("T")

EXIT_USAGE = 2  # bad arguments, configuration, input files or checkpoints: the user can fix it

# Errors whose message already says what is wrong with the user's input: printed as one line.
# Anything else (a ValueError from numpy, a KeyError, ...) is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserInputError,)


def add_set_option(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a {section} field (dotted keys for nested sections; repeatable), "
                             "checked against the field's type before anything runs")


def apply_sets(parser: argparse.ArgumentParser, cfg: T, overrides: list[str]) -> T:
    """``cfg`` with the ``--set`` values applied; a bad key or value exits 2 naming it."""
    try:
        return apply_overrides(cfg, list(overrides))
    except ConfigError as e:
        parser.error(f"--set {e}")
        raise  # unreachable: parser.error exits


def bounded(cast: Callable[[str], T], test: Callable[[T], bool], rule: str) -> Callable[[str], T]:
    """An argparse ``type`` that casts with ``cast`` and refuses values failing ``test``
    (``rule`` says what is allowed, e.g. "a number in [0, 1]"); NaN fails every comparison."""

    def parse(text: str) -> T:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not test(v):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return v

    parse.__name__ = rule  # argparse names the type in its messages
    return parse


positive_int = bounded(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = bounded(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = bounded(float, lambda v: 0 < v < math.inf, "a positive number")
non_negative_float = bounded(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
unit_float = bounded(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
fraction = bounded(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def fail(prog: str, message: Any) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command body; an error about the user's input (:class:`UserInputError`) ends in
    one line and exit 2 instead of a traceback. Everything else raises: a bug must look like one."""
    try:
        return int(body() or 0)
    except USER_ERRORS as e:
        return fail(prog, e)


def warn_synthetic(checkpoint: str | os.PathLike[str]) -> None:
    """One line on stderr when the model has only seen generated shapes (:mod:`snapper.lineage`)."""
    warning = synthetic_warning(checkpoint)
    if warning:
        print(warning, file=sys.stderr)


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def add_model_option(p: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    """``--model`` (one name for the model on every command), with ``--checkpoint`` kept as a
    hidden alias for one release (commands that said ``--checkpoint`` before); ``kwargs`` go to
    both (``default``, ``action``, ``metavar``)."""
    p.add_argument("--model", dest="model", help=help, **kwargs)
    alias = {k: v for k, v in kwargs.items() if k != "default"}
    p.add_argument("--checkpoint", dest="model", help=argparse.SUPPRESS, default=argparse.SUPPRESS, **alias)


buffer_ratio = bounded(float, lambda v: 0 < v <= MAX_BUFFER_RATIO, f"a number in (0, {MAX_BUFFER_RATIO:g}]")


def add_buffer_ratio_option(p: argparse.ArgumentParser, default: "float | None" = 1.0) -> None:
    """``--buffer-ratio`` (SPEC: the rough box is scaled about its centre before the crop);
    default None where an unset option must leave a config's own value alone."""
    p.add_argument("--buffer-ratio", type=buffer_ratio, default=default,
                   help="scale each rough box by this before cropping (default 1.0). The model reads the "
                        "scaled box as the rough box: use >1 for boxes drawn too tight (1.25 for boxes ~20%% "
                        "small); on boxes as loose as the training jitter it makes results worse "
                        "(experiments/results/buffer-ratio)")


def add_flip_option(p: argparse.ArgumentParser, default: "bool | None" = False) -> None:
    """``--flip``: test-time augmentation (``Snapper(flip=True)``); default None where an unset
    option must leave a config's own value alone."""
    p.add_argument("--flip", action="store_true", default=default,
                   help="also read each crop mirrored and average the two (test-time augmentation, 2x the model "
                        "time; experiments/results/flip-tta)")
