"""A Label Studio ML backend: the user draws a rough rectangle, snapper answers with it snapped.

It speaks the HTTP API of Label Studio's ML backends (``label-studio-ml``'s ``init_app``):
``POST /predict``, ``POST /setup``, ``GET /health`` (and ``/``), ``POST /webhook``,
``GET /versions``, ``GET /metrics``, with the same optional basic auth (``BASIC_AUTH_USER`` /
``BASIC_AUTH_PASS``). It is a small Flask app (Flask comes with MLflow) instead of a
``LabelStudioMLBase`` subclass because the only ``label-studio-ml`` on PyPI (1.0.9) pins
Flask 1.1.2 / Werkzeug 2.0.2, which would break MLflow's server, and ``label-studio-sdk``
(its image helper) would downgrade numpy; :class:`SnapperBackend` keeps that base class's
``predict(tasks, context, **kwargs)`` shape, so moving it onto the base class is mechanical.

**Interactive (Auto-Annotation, ``smart="true"``).** ``params.context.result`` holds the
regions the annotator made with a smart tool; the rectangle snapped is the **last**
rectangle of that list. Label Studio appends regions in the order they are created and the
list carries no other usable order (region ids are random strings, ``origin`` is "manual"
for all of them), so the last one is the newest; taking the first (what users report of
box-prompted backends) answers an old region again. Its ``value`` (``x, y, width, height`` in percent
of the image, ``rotation`` in degrees) becomes pixels, is snapped, and goes back in percent,
same control, same labels, ``score`` = the weakest edge's confidence and all four edge
confidences in ``meta``. A rotated rectangle is refused (HTTP 400).

**Pre-annotation (no context).** Every task is answered with its rough rectangles snapped:
those of the task's last annotation (not cancelled) that holds rectangles, else those of its
last prediction that does and was not made by this backend (imported crowd or detector boxes).

**Images**: :mod:`snapper.integrations.labelstudio_images`.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import os
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, request

from snapper.geometry import EDGE_NAMES
from snapper.imageio import LoadedImage
from snapper.inference.guard import Guard
from snapper.inference.snap import Snapper
from snapper.lineage import synthetic_warning
from snapper.models.reference import DEFAULT_MODEL, pin_model_ref, resolve_model
from snapper.integrations.labelstudio_images import LabelStudioRequestError, load_task_image
from snapper.integrations.labelstudio_loop import LOOP_ENV, ReviewLoop, load_loop
from snapper.zoom import check_passes

log = logging.getLogger(__name__)

MODEL_ENV = "SNAPPER_MODEL"  # model reference (default: the champion)
DEVICE_ENV = "SNAPPER_DEVICE"  # default cpu
DEFAULT_PORT = 9090
DEFAULT_MAX_BODY = 16 << 20  # task JSON with a data: URI image at most; image files are fetched, not posted
RECT_TYPES = ("rectanglelabels", "rectangle")


# ------------------------------------------------------------------------- labeling config


@dataclass(frozen=True)
class RectControl:
    from_name: str  # the RectangleLabels / Rectangle tag's name
    to_name: str  # the Image tag it draws on
    type: str  # "rectanglelabels" or "rectangle"
    value_key: str  # the task data field holding the image ("image" for value="$image")


def rect_controls(label_config: str | None) -> list[RectControl]:
    """The rectangle controls drawing on an Image tag, in document order ([] without a config)."""
    if not label_config:
        return []
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise LabelStudioRequestError(f"label_config is not valid XML ({e})") from None
    images = {el.get("name"): (el.get("value") or "").lstrip("$") for el in root.iter() if el.tag.lower() == "image"}
    return [RectControl(el.get("name", ""), el.get("toName", ""), el.tag.lower(), images[el.get("toName")])
            for el in root.iter() if el.tag.lower() in RECT_TYPES and el.get("toName") in images]


def control_for(region: dict[str, Any], controls: list[RectControl]) -> RectControl:
    """The control a region belongs to (by from_name; the first rectangle control without one)."""
    name = region.get("from_name")
    if not controls:
        if not name or not region.get("to_name"):
            raise LabelStudioRequestError("no label_config and the region has no from_name/to_name")
        return RectControl(name, region["to_name"], region.get("type", "rectanglelabels"), "")
    if not name:
        return controls[0]
    for c in controls:
        if c.from_name == name:
            return c
    raise LabelStudioRequestError(f"region from_name {name!r} is not a RectangleLabels/Rectangle tag on an Image "
                                  "in the labeling config")


# ----------------------------------------------------------------------------------- units


def percent_to_xywh(value: dict[str, Any], width: float, height: float) -> list[float]:
    """A Label Studio rectangle ``value`` (percent of the image) -> COCO [x, y, w, h] pixels."""
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        rotation = float(value.get("rotation") or 0.0)
    except (KeyError, TypeError, ValueError):
        raise LabelStudioRequestError(f"rectangle value needs numbers x, y, width, height (percent), got {value!r}") from None
    if not all(map(math.isfinite, (x, y, w, h, rotation))):
        raise LabelStudioRequestError(f"rectangle value is not finite: {value!r}")
    if abs(rotation % 360.0) > 1e-6 and abs(rotation % 360.0 - 360.0) > 1e-6:
        raise LabelStudioRequestError(f"the rectangle is rotated by {rotation:g} degrees; snapping needs an "
                                      "axis-aligned rectangle (rotation 0)")
    return [x * width / 100.0, y * height / 100.0, w * width / 100.0, h * height / 100.0]


def xywh_to_percent(box: "np.ndarray | list[float]", width: float, height: float) -> dict[str, float]:
    """COCO [x, y, w, h] pixels -> a Label Studio rectangle ``value`` (percent, rotation 0)."""
    x, y, w, h = (float(v) for v in box)
    return {"x": x / width * 100.0, "y": y / height * 100.0, "width": w / width * 100.0,
            "height": h / height * 100.0, "rotation": 0.0}


def check_size(region: dict[str, Any], image: LoadedImage, where: str) -> None:
    """The image Label Studio measured (``original_width/height``) must be this one, or a
    scaled copy of it (same aspect): percent then mean the same pixels."""
    ow, oh = region.get("original_width"), region.get("original_height")
    if ow and oh and abs(float(ow) / float(oh) - image.width / image.height) > 0.01 * image.width / image.height:
        raise LabelStudioRequestError(f"{where}: Label Studio measured the image as {ow}x{oh} but it decodes to "
                                      f"{image.width}x{image.height} (EXIF orientation?); refusing to guess")


# ---------------------------------------------------------------------------------- regions


def _rects(result: Any) -> list[dict[str, Any]]:
    return [r for r in (result or []) if isinstance(r, dict) and r.get("type") in RECT_TYPES]


def newest_rectangle(context: dict[str, Any]) -> dict[str, Any]:
    """The rectangle to snap in an interactive request: the last one of ``context["result"]``
    (Label Studio appends regions as they are made; see the module doc)."""
    regions = context.get("result") if isinstance(context, dict) else None
    if not isinstance(regions, list):
        raise LabelStudioRequestError("context.result must be the list of regions the annotator drew")
    rects = _rects(regions)
    if not rects:
        kinds = sorted({str(r.get("type")) for r in regions if isinstance(r, dict)})
        raise LabelStudioRequestError("context.result holds no rectangle" + (f" (only {', '.join(kinds)})" if kinds else "")
                                      + ": draw one with a smart RectangleLabels tool")
    return rects[-1]


def task_rectangles(task: dict[str, Any], own_version: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Pre-annotation's rough rectangles: those of the task's last annotation (not cancelled)
    holding any, else of its last prediction holding any that ``own_version`` did not make;
    with where they came from ("annotation 7", "prediction 3"; "" when there are none)."""
    for ann in reversed(task.get("annotations") or []):
        if isinstance(ann, dict) and not ann.get("was_cancelled") and (rects := _rects(ann.get("result"))):
            return f"annotation {ann.get('id')}", rects
    for pred in reversed(task.get("predictions") or []):
        if isinstance(pred, dict) and pred.get("model_version") != own_version and (rects := _rects(pred.get("result"))):
            return f"prediction {pred.get('id')}", rects
    return "", []


def _image_url(task: dict[str, Any], control: RectControl) -> Any:
    data = task.get("data")
    if not isinstance(data, dict):
        raise LabelStudioRequestError(f"task {task.get('id')}: no data")
    if control.value_key:
        return data.get(control.value_key)
    return data.get("image", next(iter(data.values())) if len(data) == 1 else None)


def _confidence(conf: np.ndarray) -> tuple[dict[str, float | None], float | None]:
    edges = {n: (None if not math.isfinite(c) else round(float(c), 4)) for n, c in zip(EDGE_NAMES, conf)}
    finite = [v for v in edges.values() if v is not None]
    return edges, (min(finite) if finite else None)


def region_result(region: dict[str, Any], control: RectControl, box: np.ndarray, conf: np.ndarray,
                  image: LoadedImage, model_version: str, guard: dict[str, Any] | None = None) -> dict[str, Any]:
    """One snapped region in Label Studio's result format (percent, labels kept, new id);
    ``score`` is the weakest edge's confidence, ``meta`` holds all four and ``guard``, what the
    broken-box guard gave back rough (None, or ``{"reason", "edges"}`` as ``snapper snap`` says)."""
    value = xywh_to_percent(box, image.width, image.height)
    if control.type == "rectanglelabels":
        value["rectanglelabels"] = list((region.get("value") or {}).get("rectanglelabels") or [])
    edges, score = _confidence(conf)
    text = "snapper edge confidence: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in edges.items())
    if guard is not None:
        text += f"; rough {'box' if guard['reason'] == 'collapsed' else ', '.join(guard['edges'])} kept ({guard['reason']})"
    out: dict[str, Any] = {
        "id": uuid.uuid4().hex[:10], "from_name": control.from_name, "to_name": control.to_name, "type": control.type,
        "original_width": int(region.get("original_width") or image.width),
        "original_height": int(region.get("original_height") or image.height),
        "image_rotation": 0, "value": value,
        "meta": {"text": [text], "confidence": edges, "rough_id": region.get("id"), "model_version": model_version,
                 "guard": guard},
    }
    if score is not None:
        out["score"] = score
    return out


def _prediction(results: list[dict[str, Any]], model_version: str) -> dict[str, Any]:
    scores = [r["score"] for r in results if "score" in r]
    return {"result": results, "score": min(scores) if scores else 0.0, "model_version": model_version}


# ---------------------------------------------------------------------------------- backend


class SnapperBackend:
    """What a ``LabelStudioMLBase`` subclass would do, on one :class:`snapper.inference.snap.Snapper`
    (loaded once per process by :func:`load_backend`); one snap at a time."""

    def __init__(self, snapper: Snapper, model_version: str, **changes: Any):  # SnapSettings.READ_OUT of every snap
        check_passes(snapper.cfg, changes.get("passes", snapper.settings.passes), model_version)
        self.snapper, self.model_version, self._lock = snapper.with_settings(**changes), model_version, threading.Lock()

    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                label_config: str | None = None, **kwargs: Any) -> list[Any]:
        """One answer per task: interactive when ``context`` holds regions (the newest
        rectangle of the first task snapped), else pre-annotation of every task; [] for a task
        with nothing to snap ("no prediction", not an empty one shown as a model tab at 0.00%)."""
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise LabelStudioRequestError("tasks must be a non-empty list of task objects")
        controls = rect_controls(label_config)
        if label_config and not controls:
            raise LabelStudioRequestError("the labeling config has no RectangleLabels (or Rectangle) tag on an Image")
        if context:
            return [self.interactive(tasks[0], context, controls)]
        return [self.preannotate(task, controls) for task in tasks]

    def interactive(self, task: dict[str, Any], context: dict[str, Any], controls: list[RectControl]) -> dict[str, Any]:
        region = newest_rectangle(context)
        control = control_for(region, controls)
        return _prediction(self.snap_regions(task, control, [region]), self.model_version)

    def preannotate(self, task: dict[str, Any], controls: list[RectControl]) -> dict[str, Any] | list[Any]:
        _, rects = task_rectangles(task, self.model_version)
        if not rects:
            return []
        results: list[dict[str, Any]] = []
        by_control: dict[RectControl, list[dict[str, Any]]] = {}
        for r in rects:
            by_control.setdefault(control_for(r, controls), []).append(r)
        for control, regions in by_control.items():
            results += self.snap_regions(task, control, regions)
        return _prediction(results, self.model_version)

    def snap_regions(self, task: dict[str, Any], control: RectControl, regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Snap regions of one image of ``task`` together (one decode, one batch)."""
        tid = task.get("id")
        image = load_task_image(_image_url(task, control), tid)
        boxes = []
        for r in regions:
            where = f"task {tid} region {r.get('id')}"
            check_size(r, image, where)
            try:
                boxes.append(percent_to_xywh(r.get("value") or {}, image.width, image.height))
            except LabelStudioRequestError as e:
                raise LabelStudioRequestError(f"{where}: {e}") from None
        try:
            with self._lock:
                res = self.snapper.snap(image, boxes)
        except ValueError as e:  # an unusable box (outside the image, too small, ...)
            raise LabelStudioRequestError(f"task {tid}: {e}") from None
        guard = res.guard if res.guard is not None else Guard.none(len(regions))
        return [region_result(r, control, b, c, image, self.model_version, guard.describe(i))
                for i, (r, b, c) in enumerate(zip(regions, res.boxes, res.confidence))]


@functools.lru_cache(maxsize=4)
def load_backend(ref: str | None = None, device: str | None = None, buffer_ratio: float = 1.0,
                 passes: int = 1, flip: bool = False) -> SnapperBackend:
    """The backend on model ``ref`` (default ``$SNAPPER_MODEL``, else the champion) on ``device``
    (default ``$SNAPPER_DEVICE``, else cpu), loaded once per process and arguments."""
    ref = ref or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    device = device or os.environ.get(DEVICE_ENV) or "cpu"
    ref = pin_model_ref(ref) if ref.startswith("models:/") else ref  # the version loaded is the one reported
    ckpt = resolve_model(ref)
    version = ref[len("models:/"):] if ref.startswith("models:/") else ref if not Path(ref).exists() \
        else f"{ckpt.parent.name}/{ckpt.name}"
    log.info("Label Studio backend: %s from %s on %s", version, ckpt, device)
    warning = synthetic_warning(ckpt)
    if warning:
        log.warning("%s", warning)
    return SnapperBackend(Snapper.from_checkpoint(ckpt, device=device, flip=flip), version, buffer_ratio=buffer_ratio,
                          passes=passes)


# -------------------------------------------------------------------------------- HTTP app


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise LabelStudioRequestError("the request body must be a JSON object")
    return data


def _check_auth() -> Response | None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if not (user and password):
        return None
    auth = request.authorization
    if auth and hmac.compare_digest(auth.username or "", user) and hmac.compare_digest(auth.password or "", password):
        return None
    return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="Login required"'})


def _routes(app: Flask, backend: SnapperBackend, loop: ReviewLoop | None) -> None:
    @app.post("/predict")
    def predict() -> Any:
        data = _body()
        params = data.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        results = backend.predict(data.get("tasks"), context=context or data.get("context"),
                                  label_config=data.get("label_config"))
        return jsonify({"results": results, "model_version": backend.model_version})

    @app.post("/setup")
    def setup() -> Any:
        schema = _body().get("schema")
        if schema and not rect_controls(schema):
            raise LabelStudioRequestError("the labeling config has no RectangleLabels (or Rectangle) tag on an Image")
        return jsonify({"model_version": backend.model_version})

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "UP", "model_class": type(backend).__name__, "model_version": backend.model_version})

    @app.post("/webhook")
    def webhook() -> Any:  # counted only with a review loop (snapper.integrations.labelstudio_loop)
        if loop is None:
            return jsonify({"status": "Unknown event", "result": None})
        return jsonify(loop.handle(_body()))

    @app.get("/versions")
    def versions() -> Any:
        return jsonify({"versions": [backend.model_version]})

    @app.get("/metrics")
    def metrics() -> Any:
        return jsonify({})


def create_app(backend: SnapperBackend | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               loop: ReviewLoop | None = None) -> Flask:
    """The backend's WSGI app (``gunicorn 'snapper.integrations.labelstudio:create_app()'`` works too);
    refusals answer ``{"status": "error", "error": "<one line>"}`` with their 4xx status, a body
    over ``max_body_bytes`` with 413 before it is read (Label Studio sends task JSON, not images).
    ``loop``: count submitted reviews on ``/webhook`` and start the adapt loop (default: from
    ``$SNAPPER_REVIEW_LOOP`` when set)."""
    backend = backend or load_backend()
    if loop is None and os.environ.get(LOOP_ENV):
        loop = ReviewLoop(load_loop(os.environ[LOOP_ENV]))
    app = Flask("snapper.integrations.labelstudio")
    app.config["MAX_CONTENT_LENGTH"] = int(max_body_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # edges stay left, top, right, bottom
    app.before_request(_check_auth)
    _routes(app, backend, loop)

    @app.errorhandler(LabelStudioRequestError)
    def refused(e: LabelStudioRequestError) -> Any:
        log.warning("refused: %s", e)  # Label Studio shows only "400 Client Error": the reason is here
        return jsonify({"status": "error", "error": str(e)}), e.status

    @app.errorhandler(413)
    def too_large(e: Exception) -> Any:
        error = (f"request body over this backend's limit of {int(max_body_bytes)} bytes "
                 "(snapper label-studio --max-body-mb)")
        log.warning("refused: %s", error)
        return jsonify({"status": "error", "error": error}), 413

    return app
