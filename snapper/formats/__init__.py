"""Reading and writing the formats crowd boxes arrive in: SageMaker Ground Truth manifests,
Pascal VOC XML, YOLO txt and CVAT for images 1.1 XML (COCO is the batch path's own).

Each format module has ``read(path, images_dir, ...) -> (coco_dict, sidecar)``, converting
to a rough COCO input with stable ids and a :class:`~snapper.formats.common.Sidecar` that
remembers where every box came from, and ``write(coco, sidecar, out_dir)``, writing a
(snapped) COCO dict back in that format, non-destructively: the snapped box is the main box,
and the rough box, the per-edge change and the review flag are kept beside it.
:func:`~snapper.formats.detect.detect_format` tells the formats apart and
:func:`~snapper.formats.pipeline.batch_snap_any` runs the batch path on any of them.

Modules: :mod:`~snapper.formats.common` (error, sidecar, COCO builder, safe XML, outcome
per box), :mod:`~snapper.formats.groundtruth` with :mod:`~snapper.formats.consolidate`
(several workers' boxes grouped into objects), :mod:`~snapper.formats.voc`,
:mod:`~snapper.formats.yolo`, :mod:`~snapper.formats.cvat`, :mod:`~snapper.formats.detect`,
:mod:`~snapper.formats.pipeline`.
"""

from __future__ import annotations

from snapper.formats.common import FormatError, Sidecar
from snapper.formats.detect import FORMATS, detect_format
from snapper.formats.pipeline import (
    FORMAT_CHOICES,
    FormatResult,
    batch_snap_any,
    read_any,
    resolve_format,
    write_any,
)

__all__ = ["FORMAT_CHOICES", "FORMATS", "FormatError", "FormatResult", "Sidecar", "batch_snap_any", "detect_format",
           "read_any", "resolve_format", "write_any"]
