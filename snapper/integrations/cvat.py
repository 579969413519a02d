"""Tightening the rectangles of a CVAT task through the official SDK (``cvat-sdk``, the
``cvat`` extra): fetch the task's frames and shapes, snap every rectangle of a frame in one
call, and patch the changed ones back.

CVAT's interactors return masks and its SDK auto-annotation functions see only the image, so
tightening boxes that already exist is a batch job against the REST API:

    client = connect("https://cvat.example", token=os.environ["CVAT_ACCESS_TOKEN"])
    report = tighten_task(client, 42, Snapper.from_checkpoint(folder))   # a dry run: sends nothing
    write_report(report, "task42.csv")
    tighten_task(client, 42, snapper, apply=True)                          # PATCH ?action=update

Non-destructive and reviewable: every shape and track keyframe of the task comes out as one
report row (:data:`REPORT_COLUMNS`): ``snapped`` (moved; in the patch), ``unchanged``,
``skipped`` with a reason (:data:`SKIP_REASONS`), or ``conflict`` (edited on the server after
the fetch; not sent). ``needs_review`` follows batch snapping's rules
(:func:`snapper.batch.merge.review`): an edge below ``BatchConfig.review_threshold``, an edge
moved more than ``BatchConfig.review_moved_frac`` of the box, or a rectangle that could not be
snapped. Only ``snapped`` shapes are sent, with everything but ``points`` (and ``source``)
as they were. Points are CVAT's ``[xtl, ytl, xbr, ybr]`` in frame pixels.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import urllib3

from snapper.atomic import atomic_write_csv, atomic_write_json
from snapper.config import BatchConfig
from snapper.errors import ConfigError, UserInputError
from snapper.geometry import EDGE_NAMES, box_problem, clip_boxes, xyxy_to_xywh
from snapper.imageio import ImageError, load_image
from snapper.inference.snap import Snapper

try:  # the optional extra: pip install -e '.[cvat]'
    from cvat_sdk import models as cvat_models
    from cvat_sdk.api_client import exceptions as cvat_exceptions
    from cvat_sdk.core.client import AccessTokenCredentials, Client, PasswordCredentials
    from cvat_sdk.core.exceptions import InvalidHostException
    from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
except ImportError:  # pragma: no cover - checked by sdk_available()
    cvat_models = None

log = logging.getLogger(__name__)

SEMI_AUTO = "semi-auto"  # CVAT's source for shapes a tool produced under a person's control
POINT_DIGITS = 2  # points sent back are rounded to 1/100 px
UNCHANGED_PX = 0.01  # a snapped box within this of the original on every edge is not sent

SNAPPED, UNCHANGED, SKIPPED, CONFLICT = "snapped", "unchanged", "skipped", "conflict"
# Skipped on purpose (no review): not something snapping applies to.
DESIGN_SKIPS = ("not_rectangle", "rotated", "outside", "track_keyframe", "track_outside", "frame_deleted")
# Skipped because the rectangle or its frame is unusable: these go on the review list.
PROBLEM_SKIPS = ("malformed_points", "non_finite", "unknown_frame", "degenerate", "outside_image", "too_small",
                 "image_error", "image_size_mismatch", "snap_failed")
SKIP_REASONS = DESIGN_SKIPS + PROBLEM_SKIPS

_XYXY = ("xtl", "ytl", "xbr", "ybr")
ROUGH_COLS = [f"rough_{c}" for c in _XYXY]
SNAPPED_COLS = [f"snapped_{c}" for c in _XYXY]
CHANGE_COLS = [f"change_{e}" for e in EDGE_NAMES]
CONF_COLS = [f"conf_{e}" for e in EDGE_NAMES]
REPORT_COLUMNS = ["shape_id", "track_id", "frame", "type", "label_id", "label", "status", "reason", "detail",
                  *ROUGH_COLS, *SNAPPED_COLS, *CHANGE_COLS, *CONF_COLS, "moved_px", "moved_frac", "needs_review",
                  "review", "sent"]


class CvatError(UserInputError, OSError):
    """The CVAT server failed or refused a request; the message names the server and what."""


class CvatUnreachable(CvatError, ConnectionError):
    """No HTTP answer from the CVAT server (down, wrong port, TLS failure)."""


class CvatRefused(CvatError, PermissionError):
    """CVAT refused the credentials (HTTP 401/403, a wrong password)."""


class CvatNotFound(CvatError, LookupError):
    """CVAT has no such task (or this user cannot see it): HTTP 404."""


class CvatRequestError(CvatError, ValueError):
    """A request that cannot be made as asked (a host that is no URL, a 3D task, no credentials)."""


def sdk_available() -> bool:
    return cvat_models is not None


def _require_sdk() -> None:
    if cvat_models is None:
        raise ModuleNotFoundError("cvat-sdk is not installed; install the extra: pip install -e '.[cvat]'")


def _reason(e: Exception) -> str:
    body = getattr(e, "body", None)
    text = str(body if body else getattr(e, "reason", None) or e).strip().replace("\n", " ")
    return text[:200]


@contextlib.contextmanager
def cvat_errors(host: str, what: str, missing: str | None = None) -> Iterator[None]:
    """SDK and connection errors as one-line errors naming ``host`` and ``what`` was asked:
    :class:`CvatUnreachable` (a ConnectionError), :class:`CvatRefused` (a PermissionError: HTTP
    401/403), :class:`CvatNotFound` (a LookupError: 404, with ``missing`` as the message when
    given), else :class:`CvatError`."""
    _require_sdk()
    try:
        yield
    except cvat_exceptions.ApiException as e:
        status = e.status or 0
        if status == 0:  # no HTTP answer (e.g. a TLS failure)
            raise CvatUnreachable(f"cannot reach CVAT at {host} ({what}): {_reason(e)}") from None
        if status in (401, 403):
            raise CvatRefused(f"CVAT at {host} refused {what} (HTTP {status}): {_reason(e)}") from None
        if status == 404:
            raise CvatNotFound(missing or f"CVAT at {host}: {what} not found (HTTP 404)") from None
        raise CvatError(f"CVAT at {host}: {what} failed (HTTP {status}): {_reason(e)}") from None
    except urllib3.exceptions.HTTPError as e:
        cause = getattr(e, "reason", None) or e
        raise CvatUnreachable(f"cannot reach CVAT at {host} ({what}): {type(cause).__name__}: {cause}") from None


def connect(host: str, user: str | None = None, password: str | None = None, token: str | None = None) -> "Client":
    """An authenticated SDK client: a personal access token, or a user and password (a
    session login; a refused login is a :class:`CvatRefused`)."""
    _require_sdk()
    if (token is None) == (user is None):
        raise CvatRequestError("give either an access token or a user and password")
    try:
        client = Client(host, check_server_version=False)
    except InvalidHostException as e:
        raise CvatRequestError(f"CVAT host {host!r}: {e}") from None
    host = client.api_map.host
    with cvat_errors(host, f"the login of user {user!r}"):
        if token is not None:
            client.login(AccessTokenCredentials(token))
        else:
            try:
                client.login(PasswordCredentials(user, password or ""))
            except cvat_exceptions.ApiException as e:
                if e.status == 400:  # CVAT answers a wrong password with 400
                    raise CvatRefused(f"CVAT at {host} refused the login of user {user!r}: {_reason(e)}") from None
                raise
    return client


def open_task(client: "Client", task_id: int) -> Any:
    """The task, or one-line errors (missing task, refused credentials, unreachable host)."""
    host = client.api_map.host
    with cvat_errors(host, f"access to task {task_id}",
                     missing=f"CVAT at {host} has no task {task_id} (or this user cannot see it)"):
        return client.tasks.retrieve(task_id)


@dataclass
class TightenReport:
    """One row per shape / track keyframe (:data:`REPORT_COLUMNS`), the patch that was (or would
    be) sent, and whether it was."""

    task_id: int
    host: str
    rows: list[dict[str, Any]]
    patch: Any  # cvat_sdk.models.PatchedLabeledDataRequest: the snapped shapes only
    n_tags: int = 0
    applied: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=REPORT_COLUMNS)
        for c in ("shape_id", "track_id", "frame", "label_id"):
            df[c] = pd.array([None if v is None or v != v else int(v) for v in df[c]], dtype="Int64")
        return df

    def summary(self) -> dict[str, Any]:
        df = self.frame()
        return {
            "task_id": self.task_id, "host": self.host, "applied": self.applied,
            "n_shapes": len(df), "n_tags_ignored": self.n_tags,
            "status": {s: int((df["status"] == s).sum()) for s in (SNAPPED, UNCHANGED, SKIPPED, CONFLICT)},
            "skipped": {k: int(v) for k, v in Counter(df.loc[df["status"] == SKIPPED, "reason"]).most_common()},
            "types": {k: int(v) for k, v in Counter(df["type"]).most_common()},
            "needs_review": int(df["needs_review"].sum()) if len(df) else 0,
            "sent": int(df["sent"].sum()) if len(df) else 0,
            "settings": self.settings,
        }


def _row(shape: Any, track: Any | None, label_names: dict[int, str]) -> dict[str, Any]:
    label_id = (track if track is not None else shape).label_id
    r: dict[str, Any] = {c: math.nan for c in REPORT_COLUMNS}
    r.update(shape_id=shape.get("id"), track_id=None if track is None else track.get("id"), frame=shape.frame,
             type=str(shape.type.value), label_id=label_id, label=label_names.get(label_id), status=SKIPPED,
             reason=None, detail=None, needs_review=False, review="", sent=False)
    points = list(shape.get("points") or [])
    if len(points) == 4:
        r.update(zip(ROUGH_COLS, (float(v) for v in points)))
    return r


def _skip(r: dict[str, Any], reason: str, detail: str | None = None) -> None:
    assert reason in SKIP_REASONS, reason
    r.update(status=SKIPPED, reason=reason, detail=detail)


def _frame_sizes(meta: Any, n_frames: int) -> dict[int, tuple[int, int]]:
    """Frame number -> (width, height): one entry per frame for images, one for all of a video."""
    frames = list(meta.frames or [])
    if len(frames) == 1 and n_frames > 1:
        frames = frames * n_frames
    return {i: (int(f.width), int(f.height)) for i, f in enumerate(frames)
            if f.get("width") is not None and f.get("height") is not None}


def _check_rectangle(r: dict[str, Any], shape: Any, sizes: dict[int, tuple[int, int]], deleted: set[int],
                     cfg: BatchConfig) -> np.ndarray | None:
    """The rectangle's clipped rough box (xyxy) when it can be snapped; otherwise the row is
    marked skipped with the first reason that applies."""
    points = list(shape.get("points") or [])
    if shape.get("outside", False):
        return _skip(r, "outside", "the shape is marked outside the frame")
    if float(shape.get("rotation", 0.0) or 0.0) != 0.0:
        return _skip(r, "rotated", f"rotation {shape.rotation:g} deg")
    if len(points) != 4:
        return _skip(r, "malformed_points", f"{len(points)} numbers, expected xtl, ytl, xbr, ybr")
    xyxy = np.asarray(points, dtype=np.float64)
    if not np.isfinite(xyxy).all():
        return _skip(r, "non_finite")
    if shape.frame in deleted:
        return _skip(r, "frame_deleted", f"frame {shape.frame} is deleted in the task")
    if shape.frame not in sizes:
        return _skip(r, "unknown_frame", f"frame {shape.frame} is not in the task's data")
    w, h = sizes[shape.frame]
    problem = box_problem(xyxy_to_xywh(xyxy[None])[0], w, h)
    if problem is not None:
        return _skip(r, problem, f"[{', '.join(f'{v:g}' for v in xyxy)}] on a {w}x{h} frame")
    clipped = clip_boxes(xyxy, w, h)[0]
    if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < cfg.min_box_size:
        return _skip(r, "too_small", f"{clipped[2] - clipped[0]:.2f}x{clipped[3] - clipped[1]:.2f} px after "
                                     f"clipping < {cfg.min_box_size:g}")
    return clipped


def collect_rows(annotations: Any, meta: Any, n_frames: int, label_names: dict[int, str],
                 cfg: BatchConfig) -> tuple[list[dict[str, Any]], dict[int, list[tuple[int, Any, np.ndarray]]]]:
    """Every shape and track keyframe as a report row, and per frame the rectangles to snap:
    frame -> [(row index, shape, clipped rough xyxy)]."""
    sizes = _frame_sizes(meta, n_frames)
    deleted = set(meta.get("deleted_frames") or [])
    rows: list[dict[str, Any]] = []
    todo: dict[int, list[tuple[int, Any, np.ndarray]]] = {}
    for shape in annotations.shapes:
        r = _row(shape, None, label_names)
        rows.append(r)
        kind = str(shape.type.value)
        if kind != "rectangle":
            _skip(r, "not_rectangle", f"a {kind}")
            continue
        rough = _check_rectangle(r, shape, sizes, deleted, cfg)
        if rough is not None:
            todo.setdefault(int(shape.frame), []).append((len(rows) - 1, shape, rough))
    for track in annotations.tracks:  # a keyframe moved alone would bend the interpolation: left to people
        for shape in track.shapes:
            r = _row(shape, track, label_names)
            rows.append(r)
            if shape.get("outside", False):
                _skip(r, "track_outside", f"track {track.get('id')}: the object is outside from this keyframe")
            else:
                _skip(r, "track_keyframe", f"track {track.get('id')}: tracks are not tightened")
    return rows, todo


def _fill_snapped(r: dict[str, Any], shape: Any, rough: np.ndarray, new: np.ndarray, conf: np.ndarray) -> None:
    if not np.isfinite(new).all():
        return _skip(r, "snap_failed", "non-finite model output")
    old = np.asarray(shape.points, dtype=np.float64)
    new = np.round(new, POINT_DIGITS)
    delta = np.abs(new - rough)
    extent = np.maximum(rough[[2, 3, 2, 3]] - rough[[0, 1, 0, 1]], 1e-9)
    change = new - old
    r.update(zip(SNAPPED_COLS, new.tolist()))
    r.update(zip(CHANGE_COLS, np.round(change, POINT_DIGITS).tolist()))
    r.update(zip(CONF_COLS, conf.tolist()))
    r.update(moved_px=float(delta.max()), moved_frac=float((delta / extent).max()),
             status=SNAPPED if np.abs(change).max() >= UNCHANGED_PX else UNCHANGED)


def snap_frames(task: Any, rows: list[dict[str, Any]], todo: dict[int, list[tuple[int, Any, np.ndarray]]],
                sizes: dict[int, tuple[int, int]], snapper: Snapper, cfg: BatchConfig, host: str) -> None:
    """Download each frame once (original quality) and snap all its rectangles in one call."""
    for frame in sorted(todo):
        items = todo[frame]
        with cvat_errors(host, f"frame {frame} of task {task.id}"):
            data = task.get_frame(frame, quality="original").read()
        w, h = sizes[frame]
        try:
            image = load_image(data, name=f"task {task.id} frame {frame}", max_pixels=cfg.max_pixels)
        except ImageError as e:
            for i, _, _ in items:
                _skip(rows[i], "image_error", str(e))
            continue
        if (image.width, image.height) != (w, h):
            for i, _, _ in items:
                _skip(rows[i], "image_size_mismatch", f"decoded {image.width}x{image.height}, task says {w}x{h}")
            continue
        rough = np.stack([b for _, _, b in items])
        result = snapper.snap(image, xyxy_to_xywh(rough), buffer_ratio=cfg.snap.buffer_ratio, passes=cfg.snap.passes)
        new = result.boxes.copy()
        new[:, 2:] += new[:, :2]  # xywh -> xyxy
        for (i, shape, b), n, c in zip(items, new, result.confidence):
            _fill_snapped(rows[i], shape, b, n, c)
        log.info("task %s frame %s: %d rectangle(s) snapped", task.id, frame, len(items))


def mark_review(rows: list[dict[str, Any]], cfg: BatchConfig) -> None:
    """``needs_review`` and ``review`` with batch snapping's rules (``low_confidence:<edge>``,
    ``moved``, ``kept`` for a rectangle that could not be snapped, ``conflict``)."""
    for r in rows:
        reasons = []
        if r["status"] in (SNAPPED, UNCHANGED):
            reasons += [f"low_confidence:{e}" for e, c in zip(EDGE_NAMES, CONF_COLS) if r[c] < cfg.review_threshold]
            reasons += ["moved"] if r["moved_frac"] > cfg.review_moved_frac else []
        elif r["status"] == SKIPPED and r["reason"] in PROBLEM_SKIPS:
            reasons.append("kept")
        elif r["status"] == CONFLICT:
            reasons.append("conflict")
        r["needs_review"] = bool(reasons)
        r["review"] = ";".join(reasons)


def shape_request(shape: Any, points: list[float], source: str | None) -> Any:
    """The shape as the SDK's ``LabeledShapeRequest`` with new ``points``; label, attributes,
    z_order, occluded, group, ... as they were; ``source`` replaced unless None."""
    d = shape.to_dict()
    d["points"] = [float(v) for v in points]
    if source is not None:
        d["source"] = source
    return cvat_models.LabeledShapeRequest(**d)


def build_patch(shapes: dict[int, Any], rows: list[dict[str, Any]], source: str | None) -> Any:
    """``PatchedLabeledDataRequest`` with the snapped shapes only (no tags, no tracks)."""
    requests = [shape_request(shapes[r["shape_id"]], [r[c] for c in SNAPPED_COLS], source)
                for r in rows if r["status"] == SNAPPED]
    return cvat_models.PatchedLabeledDataRequest(shapes=requests, tags=[], tracks=[])


def _same_shape(a: Any, b: Any) -> bool:
    keys = ("type", "label_id", "frame", "points", "rotation", "outside")
    return all(a.get(k) == b.get(k) for k in keys)


def apply_patch(task: Any, report: TightenReport, shapes: dict[int, Any], source: str | None) -> None:
    """Send the patch (``action=update``), after fetching the annotations again: a shape edited
    or deleted on the server since the report was made becomes a ``conflict`` and is not sent."""
    with cvat_errors(report.host, f"the annotations of task {task.id}"):
        current = {s.id: s for s in task.get_annotations().shapes}
    for r in report.rows:
        if r["status"] == SNAPPED and not (r["shape_id"] in current and _same_shape(current[r["shape_id"]],
                                                                                   shapes[r["shape_id"]])):
            r.update(status=CONFLICT, detail="the shape changed on the server after it was fetched; not sent")
    report.patch = build_patch(shapes, report.rows, source)
    if report.patch.shapes:
        with cvat_errors(report.host, f"the update of task {task.id}'s annotations"):
            task.update_annotations(report.patch, action=AnnotationUpdateAction.UPDATE)
    for r in report.rows:
        r["sent"] = r["status"] == SNAPPED
    report.applied = True


def tighten_task(client: "Client", task_id: int, snapper: Snapper, cfg: BatchConfig | None = None,
                 apply: bool = False, source: str | None = SEMI_AUTO) -> TightenReport:
    """Snap every usable rectangle of CVAT task ``task_id``; with ``apply`` the changed ones are
    patched back (``action=update``), otherwise nothing is sent. ``cfg``: batch snapping's
    settings (passes, buffer ratio, minimum box size, review rules, pixel budget);
    ``source``: the ``source`` given to patched shapes (None keeps each shape's own)."""
    cfg = cfg or BatchConfig()
    host = client.api_map.host
    task = open_task(client, task_id)
    with cvat_errors(host, f"the data and annotations of task {task_id}"):
        meta = task.get_meta()
        label_names = {int(lb.id): lb.name for lb in task.get_labels()}
        annotations = task.get_annotations()
    if str(getattr(task, "dimension", "2d")).lower() == "3d":
        raise CvatRequestError(f"task {task_id} is a 3D task: it has no image rectangles to tighten")
    n_frames = int(meta.get("size", 0) or getattr(task, "size", 0) or 0)
    rows, todo = collect_rows(annotations, meta, n_frames, label_names, cfg)
    snap_frames(task, rows, todo, _frame_sizes(meta, n_frames), snapper, cfg, host)
    shapes = {s.id: s for s in annotations.shapes if s.get("id") is not None}
    report = TightenReport(task_id=task_id, host=host, rows=rows, patch=build_patch(shapes, rows, source),
                           n_tags=len(annotations.tags),
                           settings={"passes": cfg.snap.passes, "buffer_ratio": cfg.snap.buffer_ratio,
                                     "min_box_size": cfg.min_box_size, "review_threshold": cfg.review_threshold,
                                     "review_moved_frac": cfg.review_moved_frac, "source": source})
    if apply:
        apply_patch(task, report, shapes, source)
    mark_review(rows, cfg)
    return report


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


REPORT_SUFFIXES = (".csv", ".json")


def write_report(report: TightenReport, path: str | Path) -> Path:
    """The report as CSV (one row per shape) or JSON (``{"summary": ..., "shapes": [...]}``), atomically."""
    p = Path(path)
    if p.suffix.lower() not in REPORT_SUFFIXES:
        raise ConfigError(f"{p}: a report is .csv or .json, not {p.suffix or 'no extension'!r}")
    if p.suffix.lower() == ".csv":
        return atomic_write_csv(report.frame(), p)
    return atomic_write_json(p, {"summary": report.summary(), "shapes": _json_rows(report.rows)}, indent=2)
