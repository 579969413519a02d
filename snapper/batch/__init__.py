"""Batch snapping of crowd-sourced rough annotations, with full accounting.

Input: a COCO instances JSON whose ``bbox`` fields are rough boxes, plus the images folder
(``snapper batch-snap`` also takes a folder of such JSONs: each is snapped on its own into
``OUT_DIR/<stem>/``, since annotation ids of different files may collide).

Output, in ``out_dir``:

* ``snapped.json``: the input COCO file with every top-level field, image, category and
  annotation kept, in the same order, each annotation with all of its fields. For a
  *snapped* annotation ``bbox`` is the snapped box; ``area`` is kept when the annotation has
  a non-empty ``segmentation`` (COCO's area is the mask area, which a box does not change),
  else it is set to the new ``w * h``. Every annotation gains a ``"snapper"`` object::

      {"status": "snapped" | "kept", "reason": null | "crowd" | ..., "detail": null | str,
       "rough_bbox": [x, y, w, h] (the input bbox as given) | null,
       "confidence": {"left", "top", "right", "bottom"} | null,
       "needs_review": bool, "review": [reasons], "moved_px": float | null,
       "moved_frac": float | null, "iou_with_rough": float | null,
       "guard": null | {"reason": "collapsed" | "moved", "edges": [...]}}

  A *kept* annotation is byte-for-byte the input one (its ``bbox`` unchanged, non-finite
  numbers written back as Python's ``NaN``/``Infinity``, which ``json`` and pycocotools read)
  plus that object. Kept reasons, the first that applies in this order: ``missing_bbox``,
  ``malformed_bbox`` (not a list of 4 numbers), ``non_finite``, ``out_of_range`` (an integer
  too large for a 64-bit float, e.g. ``1e400`` written as digits), ``crowd`` (``iscrowd`` set),
  ``degenerate`` (w or h <= 0), ``unknown_image`` (no such image entry), ``outside_image``,
  ``too_small`` (w or h below ``min_box_size`` after clipping to the image),
  ``image_path_invalid`` (no ``file_name``, or one that leaves the images folder),
  ``image_missing``, ``image_corrupt``, ``image_too_large`` (it would decode to more than
  ``BatchConfig.max_pixels``, after JPEG draft reduction: never decoded),
  ``image_size_mismatch`` (the JSON's width/height differ from the file's, or are beyond any
  image's: the boxes' frame is then unknown), ``snap_failed`` (non-finite model output),
  ``guard_collapsed`` (the snapped box collapsed or its edges crossed: the broken-box guard,
  :mod:`snapper.inference.guard`, kept the rough box; an edge it kept at its rough position
  leaves the box snapped, with ``guarded:<edge>`` on its review list).
  Annotation ids must be integers that fit 64 bits (results are accounted by id): anything
  else refuses the file, naming the entry. An image id beyond 64 bits makes its annotations
  ``unknown_image`` (the detail says why). ``needs_review`` is set when any edge confidence is below ``review_threshold``
  (``low_confidence``), when an edge moved more than ``review_moved_frac`` of the rough box's
  extent on its axis (``moved``), and for every kept box except crowd ones (``kept``).
* Multiple rough boxes per object (crowd-sourcing): annotations that carry the same
  ``object_id`` (``BatchConfig.fuse_key``) on the same image are several workers' boxes of one
  object. The output then has a top-level list ``"snapper_fused"`` with one entry per object:
  ``object_id, image_id, category_id`` (majority), ``annotation_ids``, ``n_snapped``, ``bbox``
  (edge-wise confidence-weighted mean of the snapped members' edges, kept >= 1 px like every
  snapped box; null when none was snapped), ``confidence`` (members' mean per edge), ``spread_px`` (weighted std per edge),
  ``needs_review``. The per-annotation boxes are not replaced by the fused one.
* ``boxes.parquet``: one row per input annotation (status, reason, rough/snapped xywh,
  confidence, movement, review flags); ``summary.json``: counts per status and reason,
  confidence quantiles, movement quantiles, throughput and, with ``truth``, the paper's
  Table 1 for the input and the output boxes (also ``table1.csv``); ``review.csv``: the
  review list; with ``review_budget``, ``review_edges.csv``: single snapped edges, least likely
  right first (:func:`review_edges`), and in ``summary.json`` how many wrong edges they hold.

Throughput: each image is decoded once for all its boxes, at the coarsest JPEG DCT scale its
crops allow; DataLoader workers decode and crop, and the main process runs the model on
batches of ``batch_size`` crops gathered across images.

Scaling and resume: :func:`plan_chunks` splits the images into chunks deterministically,
:func:`snap_chunk` writes one chunk's results atomically under a name that carries the input,
each image's content hash, the weights' hash and the settings (an existing result is reused,
so a killed run resumes; a replaced image or model re-snaps exactly what it changes), :func:`merge_chunks` checks that every input annotation id comes out
exactly once and writes the outputs atomically. :func:`batch_snap` runs the three in-process;
``flows/batch_snap.py`` fans the chunks out over a Prefect task runner.

Modules, in the order the data flows:

* :mod:`~snapper.batch.schema`: statuses, kept reasons, the per-annotation row, file names, errors;
* :mod:`~snapper.batch.rough`: parsing the input, box checks without pixels, the chunk plan;
* :mod:`~snapper.batch.image_work`: per-image checks, one decode per image, cutting the crops;
* :mod:`~snapper.batch.batcher`: crops of many images gathered into full model batches;
* :mod:`~snapper.batch.chunk`: the model cache and :func:`snap_chunk`;
* :mod:`~snapper.batch.merge`, :mod:`~snapper.batch.fuse`, :mod:`~snapper.batch.truth`: the
  accounting check and the outputs, fused boxes per object, Table 1 against true boxes;
* :mod:`~snapper.batch.pipeline`: :func:`batch_snap` (one COCO file: folders checked, model
  resolved, then :func:`snap_file`); :mod:`~snapper.batch.report`: tables and markdown of a
  finished run. A whole job (any format, a folder of files) is planned once by
  :func:`snapper.formats.pipeline.plan_batch`, for the CLI and the flow alike.
"""

from __future__ import annotations

from snapper.batch.batcher import Batcher
from snapper.batch.chunk import (
    ChunkOutcome,
    chunk_result_path,
    get_snapper,
    model_fingerprint,
    run_chunk,
    snap_chunk,
)
from snapper.batch.fuse import fuse
from snapper.batch.image_work import ImageCrops, ImageJob, chunk_jobs, iter_image_crops
from snapper.batch.merge import merge_chunks, review, review_edges
from snapper.batch.pipeline import BatchResult, batch_snap, check_folders, merge_file, result_for, snap_file
from snapper.batch.rough import (
    Chunk,
    RoughInput,
    input_files,
    load_rough,
    parse_rough,
    plan_chunks,
)
from snapper.batch.schema import (
    BOXES_PARQUET,
    CHUNKS_DIR,
    CONF_COLS,
    KEPT,
    OUTPUT_JSON,
    PRED_COLS,
    REASONS,
    REVIEW_CSV,
    REVIEW_EDGES_CSV,
    ROUGH_COLS,
    SNAPPED,
    SUMMARY_JSON,
    TABLE1_CSV,
    AccountingError,
    BatchInputError,
)
from snapper.batch.truth import truth_table

__all__ = [
    "BOXES_PARQUET", "CHUNKS_DIR", "CONF_COLS", "KEPT", "OUTPUT_JSON", "PRED_COLS", "REASONS", "REVIEW_CSV", "REVIEW_EDGES_CSV",
    "ROUGH_COLS", "SNAPPED", "SUMMARY_JSON", "TABLE1_CSV", "AccountingError", "batch_snap", "Batcher",
    "BatchInputError", "BatchResult", "check_folders", "Chunk", "chunk_jobs", "ChunkOutcome",
    "chunk_result_path", "fuse",
    "get_snapper", "ImageCrops", "ImageJob", "input_files", "iter_image_crops", "load_rough", "merge_chunks",
    "merge_file", "model_fingerprint", "parse_rough", "plan_chunks", "result_for", "review", "review_edges", "RoughInput", "run_chunk",
    "snap_chunk", "snap_file", "truth_table",
]
