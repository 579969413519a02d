"""COCO -> WebDataset tar shards + a manifest; atomic, reproducible, resumable, parallel.

Layout (``out_dir`` is typically ``shards/<dataset>``)::

    <split>-000000.tar        one sample per image, ordered by image id
    <split>-000000.tar.json   done-marker: what the tar holds + digest of the inputs it came from
    <split>-manifest.json     written last: shard list with sha256, counts, every skip + reason

A sample is ``<key>.<ext>`` (the ORIGINAL image bytes, never re-encoded; ``ext`` from the real
container format: jpg/png/webp/bmp/tif) and ``<key>.json`` (``{image_id, file_name, width,
height, annotations: [{id, bbox, category_id, iscrowd, area}]}``, bbox COCO xywh, clipped to the
image). ``key`` is the zero-padded image id (digits only: never derived from ``file_name``,
because webdataset splits keys at the first dot). Tar headers are zeroed (mtime 0, uid/gid 0,
no user names, mode 0644) so identical inputs give byte-identical shards on any machine.

Reading from object stores: copy ``out_dir`` as is (``aws s3 sync shards/coco s3://b/coco``,
``gcloud storage rsync shards/coco gs://b/coco``). Then either pass webdataset URLs directly::

    data.train_shards=["pipe:aws s3 cp s3://b/coco/train-{000000..000011}.tar -"]
    data.train_shards=["pipe:gcloud storage cat gs://b/coco/train-{000000..000011}.tar"]

or let :func:`snapper.data.manifest.shard_urls` build the exact list from the manifest, given
any URL of it (``shard_urls("pipe:aws s3 cp s3://b/coco/train-manifest.json -")``): the
manifest's file name inside the URL is replaced by each shard's name. Local manifests give
absolute paths. (``shard_urls``, ``Manifest`` and ``ShardError`` live in
:mod:`snapper.data.manifest`, the reading side, and are importable from here too.)

Every file is written through :mod:`snapper.atomic` (a unique ``.<name>.<random>.tmp``
beside it, renamed into place); :func:`remove_stale_shards` deletes what killed writers leave.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Iterator, Sequence

from snapper.atomic import TMP_SUFFIX, atomic_open, atomic_write_bytes
from snapper.config import SHARD_MIN_BOX_SIZE
from snapper.data.coco import CocoIndex, load_coco
from snapper.data.manifest import (
    FORMAT,
    Manifest,
    ShardError,
    check_split,
    manifest_path,
)
from snapper.data.reader import iter_samples
from snapper.data.records import WRITTEN_EXTS, ImageRecord, sniff_image_format
from snapper.errors import ConfigError

__all__ = [
    "DEFAULT_SHARD_SIZE", "ShardInfo", "ShardSpec", "hold_out", "iter_shard",
    "plan_shards", "remove_stale_shards", "sample_key", "sha256_file", "shard_dataset", "shard_index",
    "split_by_image", "write_manifest", "write_shard",
]

KEY_DIGITS = 12
DEFAULT_SHARD_SIZE = 1000


def sample_key(image_id: int) -> str:
    """Dot-free, sortable sample key for an image id."""
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        raise ValueError(f"image id {image_id!r} is not a non-negative integer")
    return f"{image_id:0{KEY_DIGITS}d}"


def _dumps(obj: Any) -> bytes:
    """Canonical JSON: same object -> same bytes (sorted keys, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_file(path: "str | os.PathLike[str]") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- planning


@dataclass
class ShardSpec:
    """Which images go into one shard. Plain data: picklable and JSON-able (for Prefect tasks)."""

    split: str
    number: int
    records: list[ImageRecord]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:06d}.tar"

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "number": self.number, "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardSpec":
        return cls(d["split"], int(d["number"]), [ImageRecord.from_dict(r) for r in d["records"]])


@dataclass
class ShardInfo:
    file: str  # name relative to the output folder
    samples: int
    boxes: int  # non-crowd annotations
    crowd: int
    bytes: int
    sha256: str
    spec_digest: str  # digest of the inputs (sidecars + source file identities)
    written: bool = field(default=True, compare=False)  # False when an existing shard was reused

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("written")
        return d


def plan_shards(index: CocoIndex, shard_size: int = DEFAULT_SHARD_SIZE, split: str = "train") -> list[ShardSpec]:
    """Consecutive runs of ``shard_size`` images in image-id order: the same index and size give
    the same assignment on every machine and in every process."""
    check_split(split)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    records = sorted(index.images, key=lambda r: r.image_id)
    return [ShardSpec(split, n, records[i : i + shard_size]) for n, i in enumerate(range(0, len(records), shard_size))]


def _spec_digest(spec: ShardSpec) -> str:
    """Digest of everything a shard's bytes depend on; stat() (size, mtime) stands in for the
    image content so that checking a finished shard does not re-read every image."""
    h = hashlib.sha256(FORMAT.encode())
    for r in spec.records:
        try:
            st = os.stat(r.path)
        except OSError as e:
            raise ShardError(f"{spec.name}: image id {r.image_id}: cannot stat {r.path} ({e})") from e
        h.update(_dumps([r.sidecar(), st.st_size, st.st_mtime_ns]))
    return h.hexdigest()


# ---------------------------------------------------------------------------- writing


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes what tarfile writes, so the sha256 needs no second read."""

    def __init__(self, f: Any) -> None:
        self._f, self._h, self._n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        b = bytes(b)
        self._f.write(b)
        self._h.update(b)
        self._n += len(b)
        return len(b)

    def tell(self) -> int:
        return self._n

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _read_marker(final: Path) -> dict[str, Any] | None:
    try:
        return json.loads((final.with_name(final.name + ".json")).read_bytes())
    except (OSError, ValueError):
        return None


def _reused(final: Path, digest: str, verify: bool) -> ShardInfo | None:
    """The finished shard's info when its done-marker matches the inputs (and, with
    ``verify``, its bytes still hash to the recorded sha256)."""
    marker = _read_marker(final)
    if marker is None or marker.get("spec_digest") != digest or not final.is_file():
        return None
    if final.stat().st_size != marker.get("bytes") or (verify and sha256_file(final) != marker.get("sha256")):
        return None
    return ShardInfo(**{k: marker[k] for k in ShardInfo.__dataclass_fields__ if k != "written"}, written=False)


def _add_record(tar: tarfile.TarFile, spec: ShardSpec, r: ImageRecord) -> None:
    key = sample_key(r.image_id)
    try:
        with open(r.path, "rb") as img:  # type: ignore[arg-type]
            data = img.read()
    except OSError as e:
        raise ShardError(f"{spec.name}: image id {r.image_id}: cannot read {r.path} ({e})") from e
    ext = sniff_image_format(data[:16])
    if ext is None:
        raise ShardError(f"{spec.name}: image id {r.image_id}: {r.path} is not one of {WRITTEN_EXTS}")
    side = _dumps(r.sidecar())
    tar.addfile(_member(f"{key}.{ext}", len(data)), io.BytesIO(data))
    tar.addfile(_member(f"{key}.json", len(side)), io.BytesIO(side))


def write_shard(spec: ShardSpec, out_dir: str | os.PathLike[str], verify: bool = False) -> ShardInfo:
    """Write one shard atomically, or reuse it when its done-marker matches the inputs.

    Reuse needs: the tar exists with the recorded size and the marker's input digest equals the
    current one (``verify=True`` also re-hashes the tar). Otherwise the tar is streamed to a
    unique temp file (``snapper.atomic``), fsynced and renamed; the marker is written after
    it, so a crash in between only costs a rewrite.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / spec.name
    digest = _spec_digest(spec)
    reused = _reused(final, digest, verify)
    if reused is not None:
        return reused
    with atomic_open(final, "wb") as f:
        hw = _HashingWriter(f)
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 22) as tar:  # type: ignore[call-overload]
            for r in spec.records:
                _add_record(tar, spec, r)
    crowd = sum(1 for r in spec.records for a in r.annotations if a["iscrowd"])
    boxes = sum(len(r.annotations) for r in spec.records) - crowd
    info = ShardInfo(spec.name, len(spec.records), boxes, crowd, hw.tell(), hw.hexdigest(), digest)
    atomic_write_bytes(final.with_name(final.name + ".json"), _dumps(info.to_dict()))
    return info


# ---------------------------------------------------------------------------- reading (safe)


def iter_shard(source: str | os.PathLike[str] | Any) -> Iterator[tuple[str, str, bytes, dict[str, Any]]]:
    """Yield ``(key, ext, image_bytes, sidecar)`` from a shard path or open binary stream.

    The members are read by :func:`snapper.data.reader.iter_samples` (names only matched,
    never used as paths: ``<digits>.<known ext>``, regular files only), and each key must be
    one image + one json, so a tampered shard (``../x``, links, devices) is rejected with an
    error naming the member.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
    owned = isinstance(source, (str, os.PathLike))
    f = open(source, "rb") if owned else source
    try:
        for sample in iter_samples(f, str(name)):
            key = sample.pop("__key__")
            exts = [e for e in sample if e != "json"]
            if "json" not in sample or len(exts) != 1:
                raise ShardError(f"{name}: sample {key} has members {sorted(sample)}, expected one image + json")
            yield key, exts[0], sample[exts[0]], json.loads(sample["json"])
    finally:
        if owned:
            f.close()


# ---------------------------------------------------------------------------- manifest


def write_manifest(
    out_dir: str | os.PathLike[str],
    split: str,
    infos: Sequence[ShardInfo],
    index: CocoIndex,
    ann_file: str | os.PathLike[str] | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """Write ``<split>-manifest.json`` atomically, and only if its content changed (so an
    idempotent re-run leaves its mtime alone). Must be called after every shard is written.

    ``params`` are recorded as given (``shard_dataset`` passes ``shard_size`` and, for a
    hold-out, ``val_fraction``/``seed``); the selected image ids are recorded as a sha256."""
    infos = sorted(infos, key=lambda i: i.file)
    if sum(i.samples for i in infos) != len(index.images):
        raise ShardError(f"{out_dir}: shards hold {sum(i.samples for i in infos)} samples, index has {len(index.images)}")
    if ann_file is not None and Path(ann_file).resolve() != Path(index.ann_file).resolve():
        raise ValueError(f"index was loaded from {index.ann_file}, not {ann_file}")
    counts = index.counts()
    data = {
        "format": FORMAT,
        "split": check_split(split),
        "shards": [{k: v for k, v in i.to_dict().items() if k != "spec_digest"} for i in infos],
        "counts": {**counts, "shards": len(infos), "bytes": sum(i.bytes for i in infos)},
        "skip_counts": index.skip_counts,
        "image_skip_counts": index.image_skip_counts,
        "skipped": index.skipped,
        "clipped_annotation_ids": index.clipped,
        "source": {"annotations": Path(index.ann_file).name, "sha256": index.ann_sha256},
        "params": {"min_box_size": index.min_box_size, "check_images": index.check_images,
                   "image_ids_sha256": hashlib.sha256(_dumps(index.input_image_ids)).hexdigest(), **(params or {})},
    }
    path = manifest_path(out_dir, split)
    blob = json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
    try:
        unchanged = path.read_bytes() == blob
    except OSError:
        unchanged = False
    if not unchanged:
        atomic_write_bytes(path, blob)
    return path


def _stale_patterns(split: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(this split's shards and markers; temp files of killed writers of them or of the
    manifest: ``.<name>.<random>.tmp`` from ``snapper.atomic``, ``<name>.tmp`` from older
    versions)."""
    sp = re.escape(split)
    target = rf"{sp}-(?:[0-9]{{6}}\.tar(?:\.json)?|manifest\.json)"
    shard = re.compile(rf"^{sp}-[0-9]{{6}}\.tar(\.json)?$")
    temp = re.compile(rf"^(?:\.{target}\.[^.]+|{target}){re.escape(TMP_SUFFIX)}$")
    return shard, temp


def remove_stale_shards(out_dir: Path, split: str, keep: set[str]) -> list[str]:
    """Delete this split's shards/markers that the current plan does not contain (left by a
    larger earlier run) and the temp files of killed writers, so globbing ``<split>-*.tar``
    stays truthful. Run it only when no writer of this split is running."""
    shard, temp = _stale_patterns(split)
    removed = []
    for p in sorted(out_dir.iterdir()):
        stale = shard.match(p.name) is not None and p.name.removesuffix(".json") not in keep
        if stale or temp.match(p.name):
            p.unlink()
            removed.append(p.name)
    return removed


# ---------------------------------------------------------------------------- driver


def split_by_image(index: CocoIndex, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic hold-out by image: an image is in val when a hash of (seed, image id) falls
    below ``val_fraction``. Membership depends on the image alone, so adding images to a dataset
    never moves existing ones between splits (no leakage across dataset versions). Skipped
    images are split too, so each skip is reported in exactly one manifest. With
    ``val_fraction > 0`` and >= 2 images, val gets at least one image.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def u(image_id: int) -> float:
        d = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
        return int.from_bytes(d, "little") / 2.0**64

    ids = index.input_image_ids
    val = [i for i in ids if u(i) < val_fraction]
    if val_fraction > 0 and not val and len(ids) >= 2:
        val = [min(ids, key=u)]
    vs = set(val)
    return [i for i in ids if i not in vs], val


def hold_out(index: CocoIndex, split: str = "train", val_fraction: float = 0.0,
             seed: int = 0) -> tuple[list[tuple[str, list[int] | None]], dict[str, Any]]:
    """The splits to write, ``[(name, image ids or None for all)]``, and the hold-out
    parameters the manifests record: ``split`` alone, or with ``val_fraction > 0`` ``split``
    plus a ``val`` split held out by :func:`split_by_image`."""
    if val_fraction <= 0:
        return [(split, None)], {}
    if split == "val":
        raise ConfigError("split must not be 'val' when val_fraction > 0 (val is the held-out split)")
    train_ids, val_ids = split_by_image(index, val_fraction, seed)
    return [(split, train_ids), ("val", val_ids)], {"val_fraction": val_fraction, "seed": seed}


def shard_index(
    index: CocoIndex,
    out_dir: str | os.PathLike[str],
    split: str = "train",
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    image_ids: Sequence[int] | None = None,
    params: dict[str, Any] | None = None,
    verify: bool = False,
) -> Manifest:
    """Shard an already loaded index (see :func:`shard_dataset`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params or {})
    if image_ids is not None:
        ids = sorted({int(i) for i in image_ids})
        index = index.subset(ids)
    specs = plan_shards(index, shard_size, split)
    params["shard_size"] = shard_size
    if workers > 1 and len(specs) > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(specs))) as ex:
            infos = list(ex.map(write_shard, specs, repeat(out), repeat(verify)))
    else:
        infos = [write_shard(s, out, verify) for s in specs]
    path = write_manifest(out, split, infos, index, params=params)
    remove_stale_shards(out, split, {i.file for i in infos})
    m = Manifest.load(path)
    m.written = [i.file for i in infos if i.written]
    return m


def shard_dataset(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str = "train",
    shard_size: int = DEFAULT_SHARD_SIZE,
    min_box_size: float = SHARD_MIN_BOX_SIZE,
    workers: int = 1,
    image_ids: Sequence[int] | None = None,
    check_images: str = "header",
    verify: bool = False,
) -> Manifest:
    """Validate ``ann_file``, write every missing/outdated shard (in ``workers`` processes) and
    the manifest. A re-run with the same inputs rewrites nothing; an interrupted run resumes
    with the shards it lacks. ``image_ids`` restricts the split (see :func:`split_by_image`)."""
    index = load_coco(ann_file, images_dir, min_box_size=min_box_size, check_images=check_images)  # type: ignore[arg-type]
    return shard_index(index, out_dir, split, shard_size, workers, image_ids, verify=verify)
