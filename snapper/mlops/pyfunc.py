"""The pyfunc model MLflow's model server runs and its request schema (the server itself:
:mod:`snapper.integrations.serve`).

A request is a dataframe, one row per rough box (``dataframe_records`` or ``dataframe_split``
JSON, as MLflow's server takes it):

==============  =======  ===========================================================
column          type     meaning
==============  =======  ===========================================================
``image_b64``   string   the image file's bytes (JPEG, PNG, ...), base64-encoded
``image_path``  string   instead of ``image_b64``: a file under the folder the operator
                         allowed with ``SNAPPER_SERVE_IMAGE_ROOT`` (refused otherwise)
``x y w h``     double   the rough box, COCO ``[x, y, w, h]`` in original pixels
``buffer_ratio`` double  optional, rough-box scale before cropping, >1 for boxes drawn
                         too tight (default: the ``buffer_ratio`` param, 1.0)
==============  =======  ===========================================================

Request params (``"params"`` next to the dataframe): ``buffer_ratio`` (default 1.0),
``passes`` (1, or 2 for the zoom-in pass of a model trained with ``model.zoom``) and ``flip``
(``true``: also read every crop mirrored and average, test-time augmentation at twice the
model time; default ``false``).

Rows of one image are snapped together (the image is decoded once). The answer has one row
per request row: snapped ``x, y, w, h``, ``conf_left, conf_top, conf_right, conf_bottom``
(probability that the edge is within the model's confidence radius) and ``guard``: ``""``, or
what the broken-box guard (:mod:`snapper.inference.guard`) gave back rough, ``"collapsed"`` (the
whole rough box) or ``"moved:left,bottom"`` (those edges at their rough position).

A bad request is refused as a whole with :class:`SnapRequestError`, an MLflow
``INVALID_PARAMETER_VALUE`` error: the server answers HTTP 400 with JSON whose ``cause`` is one
line naming the row (rows count from 0) and ``row`` its number.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from snapper.config import MAX_BUFFER_RATIO
from snapper.errors import UserInputError
from snapper.geometry import EDGE_NAMES, box_problem
from snapper.imageio import IMAGE_ROOT_ENV, ImageError, LoadedImage, image_root, load_image
from snapper.inference.snap import Snapper
from snapper.lineage import synthetic_warning
from snapper.mlops.tracking import mlflow  # first: it sets MLflow's telemetry defaults before the import
from snapper.zoom import check_passes

from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # noqa: E402, I001  (maps to HTTP 400)

BOX_COLUMNS = ("x", "y", "w", "h")
NUMBER_COLUMNS = (*BOX_COLUMNS, *(f"conf_{e}" for e in EDGE_NAMES))
OUTPUT_COLUMNS = (*NUMBER_COLUMNS, "guard")


class SnapRequestError(mlflow.exceptions.MlflowException, UserInputError):
    """A request the service refuses: HTTP 400 from MLflow's model server, with ``cause`` (one
    line, naming the row) and ``row`` in the JSON body next to MLflow's own ``message``."""

    def __init__(self, row: int | None, problem: str):
        cause = problem if row is None else f"row {row}: {problem}"
        super().__init__(cause, error_code=INVALID_PARAMETER_VALUE, cause=cause, row=row)
        self.cause = cause
        self.row = row


# ------------------------------------------------------------------------------- requests


def _decode_b64(text: Any, row: int) -> bytes:
    if not isinstance(text, str) or not text:
        raise SnapRequestError(row, "image_b64 is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SnapRequestError(row, "image_b64 is not valid base64 (standard alphabet, padded)") from None


def _allowed_path(text: Any, root: Path | None, row: int) -> Path:
    """``text`` inside ``root`` (after resolving links and ``..``), or a refusal naming the row."""
    if root is None:
        raise SnapRequestError(row, "image_path is refused: this server reads no files of its own; send the "
                                    f"image bytes base64-encoded in image_b64 (or start it with {IMAGE_ROOT_ENV})")
    p = Path(str(text))
    try:
        real = (p if p.is_absolute() else root / p).resolve()
        inside, exists = real.is_relative_to(root), real.is_file()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops, ...
        raise SnapRequestError(row, f"image_path {str(text)!r} is not a usable path") from None
    if not inside:
        raise SnapRequestError(row, f"image_path {str(text)!r} is outside the folder this server may read")
    if not exists:
        raise SnapRequestError(row, f"image_path {str(text)!r}: no such file")
    return real


def _present(value: Any) -> bool:
    """A cell that holds something (None, NaN, pandas' NA and "" do not)."""
    if value is None or (isinstance(value, str) and not value):
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like cells: present
        return True


def image_sources(df: pd.DataFrame, root: Path | None) -> list[bytes | Path]:
    """Each row's image (bytes or an allowed path); a missing, doubled or refused one raises
    :class:`SnapRequestError` naming the row."""
    b64 = df["image_b64"] if "image_b64" in df.columns else pd.Series([None] * len(df))
    paths = df["image_path"] if "image_path" in df.columns else pd.Series([None] * len(df))
    sources: list[bytes | Path] = []
    for row, (data, path) in enumerate(zip(b64.tolist(), paths.tolist())):
        if _present(data) and _present(path):
            raise SnapRequestError(row, "give image_b64 or image_path, not both")
        if _present(data):
            sources.append(_decode_b64(data, row))
        elif _present(path):
            sources.append(_allowed_path(path, root, row))
        elif "image" in df.columns:  # the request format of models registered before image_b64
            raise SnapRequestError(row, "column 'image' (a path on the server) is not read any more: send the "
                                        "image file's bytes base64-encoded in column 'image_b64'")
        else:
            raise SnapRequestError(row, "no image: put the image file's bytes, base64-encoded, in image_b64")
    return sources


def _ok_ratio(r: np.ndarray) -> np.ndarray:
    return np.isfinite(r) & (r > 0) & (r <= MAX_BUFFER_RATIO)


def _ratios(df: pd.DataFrame, params: Mapping[str, Any] | None) -> np.ndarray:
    """Each row's Buffer Ratio (its column, else ``params.buffer_ratio``, else 1), each checked
    as the CLI and the configs check it."""
    value = (params or {}).get("buffer_ratio", 1.0)
    try:
        default = float(1.0 if value is None else value)
    except (TypeError, ValueError):
        default = float("nan")
    if not _ok_ratio(np.array([default]))[0]:
        raise SnapRequestError(None, f"params.buffer_ratio={value!r}: must be a number in (0, {MAX_BUFFER_RATIO:g}]")
    if "buffer_ratio" not in df.columns:
        return np.full(len(df), default)
    ratios = pd.to_numeric(df["buffer_ratio"], errors="coerce").fillna(default).to_numpy(np.float64)
    bad = np.flatnonzero(~_ok_ratio(ratios))
    if len(bad):
        raise SnapRequestError(int(bad[0]), f"buffer_ratio must be a number in (0, {MAX_BUFFER_RATIO:g}], got "
                                            f"{df['buffer_ratio'].tolist()[bad[0]]!r}")
    return ratios


def _boxes(df: pd.DataFrame) -> np.ndarray:
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise SnapRequestError(None, f"missing column(s) {missing}: each row needs the rough box x, y, w, h")
    boxes = df[list(BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    return boxes


def _passes(snapper: Snapper, params: Mapping[str, Any] | None) -> int:
    value = (params or {}).get("passes", 1)
    try:
        check_passes(snapper.cfg, int(value), "the served model")
    except (TypeError, ValueError) as e:
        raise SnapRequestError(None, f"params.passes={value!r}: {e}") from None
    return int(value)


def _flip(params: Mapping[str, Any] | None) -> bool:
    value = (params or {}).get("flip", False)
    if isinstance(value, str) and value.lower() in ("true", "false"):  # a query string's spelling
        return value.lower() == "true"
    if not isinstance(value, (bool, np.bool_)):
        raise SnapRequestError(None, f"params.flip={value!r}: flip must be true or false")
    return bool(value)


def _load(source: bytes | Path, row: int) -> LoadedImage:
    try:
        return load_image(source, name="image_b64" if isinstance(source, bytes) else "image_path")
    except ImageError as e:
        raise SnapRequestError(row, str(e)) from None


def snap_rows(snapper: Snapper, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None,
              root: Path | None = None) -> pd.DataFrame:
    """Snap every row of a request (see the module doc); rows of one image share one decode."""
    df = pd.DataFrame(model_input).reset_index(drop=True)
    boxes = _boxes(df)
    passes = _passes(snapper, params)
    snapper = snapper.with_settings(flip=_flip(params))
    ratios = _ratios(df, params)
    sources = image_sources(df, root)
    out = np.full((len(df), len(NUMBER_COLUMNS)), np.nan)
    guard = [""] * len(df)
    groups: dict[tuple[Any, float], list[int]] = {}
    for row, (src, r) in enumerate(zip(sources, ratios)):
        groups.setdefault((src, float(r)), []).append(row)
    images: dict[Any, LoadedImage] = {}
    for (src, ratio), rows in groups.items():
        if src not in images:
            images[src] = _load(src, rows[0])
        image = images[src]
        for row in rows:
            problem = box_problem(boxes[row], image.width, image.height)
            if problem is not None:
                raise SnapRequestError(row, f"box {boxes[row].tolist()} is unusable ({problem}) for an image of "
                                            f"{image.width}x{image.height}")
        res = snapper.snap(image, boxes[rows], buffer_ratio=ratio, passes=passes)
        out[rows, :4], out[rows, 4:] = res.boxes, res.confidence
        for i, row in enumerate(rows):
            guard[row] = res.guard.label(i) if res.guard is not None else ""
    answer = pd.DataFrame(out, columns=list(NUMBER_COLUMNS))
    answer["guard"] = guard
    return answer


# ------------------------------------------------------------------------------- the model


class SnapperPyfunc(mlflow.pyfunc.PythonModel):
    """A checkpoint behind MLflow's pyfunc interface (the request schema is the module doc's)."""

    def load_context(self, context: Any) -> None:
        self._snapper = Snapper.from_checkpoint(context.artifacts["checkpoint"])
        self._root = image_root()
        warning = synthetic_warning(context.artifacts["checkpoint"])  # in the server's log, once
        if warning:
            logging.getLogger(__name__).warning("%s", warning)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return snap_rows(self._snapper, model_input, params, getattr(self, "_root", None))
        except SnapRequestError:
            raise
        except UserInputError as e:  # any other refusal of the input: a 400 with its one-line cause too
            raise SnapRequestError(None, str(e)) from None


def signature() -> "mlflow.models.ModelSignature":
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image_b64", required=False), ColSpec("string", "image_path", required=False),
                     *[ColSpec("double", c, required=False) for c in BOX_COLUMNS],  # a missing one: our 400, one line
                     ColSpec("double", "buffer_ratio", required=False)])
    outputs = Schema([*[ColSpec("double", c) for c in NUMBER_COLUMNS], ColSpec("string", "guard")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("buffer_ratio", "double", 1.0),
                                                                         ParamSpec("passes", "long", 1),
                                                                         ParamSpec("flip", "boolean", False)]))


def encode_image(path: str | os.PathLike[str]) -> str:
    """A file's bytes as the ``image_b64`` value of a request."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def request_json(image_b64: str, boxes: "list[list[float]]", buffer_ratio: float | None = None,
                 passes: int | None = None, flip: bool | None = None) -> dict[str, Any]:
    """The JSON body of a request for several boxes of one image (``dataframe_split``)."""
    columns = ["image_b64", *BOX_COLUMNS]
    data = [[image_b64, *map(float, b)] for b in boxes]
    body: dict[str, Any] = {"dataframe_split": {"columns": columns, "data": data}}
    params = {k: v for k, v in (("buffer_ratio", None if buffer_ratio is None else float(buffer_ratio)),
                                ("passes", passes), ("flip", flip)) if v is not None}
    if params:
        body["params"] = params
    return body
