"""Where the Label Studio backend reads a task's image, and what it refuses.

**Images** are read from the task's data field named by the Image tag: Label Studio uploads
(``/data/upload/...``, under ``$LABEL_STUDIO_BASE_DATA_DIR/media/upload``), local storage
(``/data/local-files/?d=...``, under ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``), plain
paths under :data:`snapper.integrations.serve.IMAGE_ROOT_ENV`, ``data:`` URIs; otherwise downloaded from
Label Studio itself (``$LABEL_STUDIO_URL`` with ``$LABEL_STUDIO_API_KEY``; cloud storage
through its presign endpoint). Other hosts only when listed in :data:`URL_HOSTS_ENV`. A path
that leaves its folder is refused.

Downloads follow at most :data:`MAX_REDIRECTS` redirects, each hop checked against the same
allow-list (an allowed host must not be a way around it); Label Studio's own answers may
redirect anywhere (its presign endpoint sends the signed cloud-storage URL).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

from snapper.errors import UserInputError
from snapper.imageio import IMAGE_ROOT_ENV, ImageError, LoadedImage, image_root, load_image

URL_HOSTS_ENV = "SNAPPER_LS_URL_HOSTS"  # comma-separated extra hosts image URLs may come from
MAX_DOWNLOAD_BYTES = 64 << 20
MAX_REDIRECTS = 5
_CLOUD = ("s3:", "gs:", "azure-blob:")


class LabelStudioRequestError(UserInputError, ValueError):
    """A request the backend refuses; ``status`` is the HTTP status (4xx), the message one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _env_dir(*names: str, default: str | None = None) -> Path | None:
    text = next((os.environ[n] for n in names if os.environ.get(n)), default)
    return Path(text).expanduser().resolve() if text else None


def _inside(root: Path | None, candidate: str, what: str, relative: bool = True) -> Path | None:
    """``candidate`` (under ``root`` when ``relative``, else as given) when it stays inside
    ``root`` after resolving links and ``..``; None when there is no such file."""
    if root is None:
        return None
    try:
        p = Path(candidate)
        real = (root / candidate.lstrip("/") if relative or not p.is_absolute() else p).resolve()
        inside, exists = real.is_relative_to(root), real.is_file()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, link loops, ...
        raise LabelStudioRequestError(f"{what}: not a usable path") from None
    if not inside:
        raise LabelStudioRequestError(f"{what}: the path leaves the folder images are read from")
    return real if exists else None


def _label_studio() -> tuple[str, str]:
    return os.environ.get("LABEL_STUDIO_URL", "").rstrip("/"), os.environ.get("LABEL_STUDIO_API_KEY", "")


def _listed_hosts() -> set[str]:
    return {h.strip() for h in os.environ.get(URL_HOSTS_ENV, "").split(",") if h.strip()}


def _allowed_hosts() -> set[str]:
    """Hosts image URLs may name: Label Studio's own and those listed in :data:`URL_HOSTS_ENV`."""
    hosts = _listed_hosts()
    base, _ = _label_studio()
    return hosts | ({urlparse(base).hostname} if base else set())  # type: ignore[arg-type]


def _download(url: str, token: str | None, what: str, any_redirect: bool = False) -> bytes:
    """GET ``url`` following at most :data:`MAX_REDIRECTS` redirects, each checked: a hop to a
    host outside :func:`_allowed_hosts` is refused (an allowed host must not be a way around
    the allow-list), unless ``any_redirect`` (Label Studio's own answers: its presign endpoint
    redirects to the cloud storage's signed URL). The token never follows a hop to another host."""
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        for _ in range(MAX_REDIRECTS + 1):
            with requests.get(url, headers=headers, stream=True, timeout=30, allow_redirects=False) as r:
                if r.is_redirect:
                    url, headers = _next_hop(url, r.headers.get("location", ""), headers, any_redirect, what)
                    continue
                if r.status_code != 200:
                    raise LabelStudioRequestError(f"{what}: HTTP {r.status_code} from {urlparse(url).netloc}",
                                                  404 if r.status_code == 404 else 400)
                data = bytearray()
                for chunk in r.iter_content(1 << 16):
                    data += chunk
                    if len(data) > MAX_DOWNLOAD_BYTES:
                        raise LabelStudioRequestError(f"{what}: larger than {MAX_DOWNLOAD_BYTES >> 20} MiB")
                return bytes(data)
    except requests.RequestException as e:
        raise LabelStudioRequestError(f"{what}: download failed ({type(e).__name__})", 502) from None
    raise LabelStudioRequestError(f"{what}: more than {MAX_REDIRECTS} redirects", 502)


def _next_hop(url: str, location: str, headers: dict[str, str], any_redirect: bool,
              what: str) -> tuple[str, dict[str, str]]:
    nxt = urljoin(url, location)
    hop = urlparse(nxt)
    if hop.scheme not in ("http", "https"):
        raise LabelStudioRequestError(f"{what}: redirected to a {hop.scheme or 'relative'}: URL, refused")
    if not any_redirect and hop.hostname not in _allowed_hosts():
        raise LabelStudioRequestError(f"{what}: {urlparse(url).netloc} redirected to {hop.netloc}, which is not an "
                                      f"allowed host (Label Studio or {URL_HOSTS_ENV}); refused")
    return nxt, (headers if hop.netloc == urlparse(url).netloc else {})


def _from_label_studio(path: str, task_id: Any, what: str) -> bytes:
    base, token = _label_studio()
    if not base or not token:
        raise LabelStudioRequestError(f"{what}: not found locally; set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                                      "so the backend can fetch it from Label Studio", 404)
    if path.startswith(_CLOUD):
        if task_id is None:
            raise LabelStudioRequestError(f"{what}: a cloud storage image needs the task id")
        presign = requests.Request("GET", f"{base}/tasks/{task_id}/presign/", params={"fileuri": path}).prepare()
        return _download(str(presign.url), token, what, any_redirect=True)
    return _download(base + "/" + path.lstrip("/"), token, what, any_redirect=True)


def _data_uri(url: str, what: str) -> bytes:
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise LabelStudioRequestError(f"{what}: only base64 data: URIs are read")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise LabelStudioRequestError(f"{what}: invalid base64 in the data: URI") from None


def image_source(url: Any, task_id: Any = None) -> "bytes | Path":
    """The bytes or local file of a task's image reference (see the module doc); refusals raise
    :class:`LabelStudioRequestError` naming the task."""
    what = f"task {task_id} image"
    if not isinstance(url, str) or not url:
        raise LabelStudioRequestError(f"{what}: the task has no image reference in its data")
    if url.startswith("data:"):
        return _data_uri(url, what)
    parsed = urlparse(url)
    base, token = _label_studio()
    if parsed.scheme in ("http", "https"):
        if not base or parsed.netloc != urlparse(base).netloc:
            if parsed.hostname not in _listed_hosts():
                raise LabelStudioRequestError(f"{what}: {parsed.netloc} is not Label Studio ({base or 'LABEL_STUDIO_URL unset'}); "
                                              f"list it in {URL_HOSTS_ENV} to fetch images from it")
            return _download(url, None, what)
        local_url = parsed.path + (f"?{parsed.query}" if parsed.query else "")  # Label Studio's own file?
        if not (parsed.path.startswith("/data/upload/") or "d" in parse_qs(parsed.query)):
            return _download(url, token, what, any_redirect=True)
        url, parsed = local_url, urlparse(local_url)
    if url.startswith(("upload/", "/upload/")):
        url, parsed = "/data/" + url.lstrip("/"), urlparse("/data/" + url.lstrip("/"))
    if parsed.path.startswith("/data/upload/"):
        root = _env_dir("LABEL_STUDIO_BASE_DATA_DIR", default="~/.local/share/label-studio")
        local = _inside(root / "media" / "upload" if root else None, unquote(parsed.path[len("/data/upload/"):]), what)
        return local if local is not None else _from_label_studio(url, task_id, what)
    if parsed.path.startswith("/data/") and "d" in parse_qs(parsed.query):
        rel = parse_qs(parsed.query)["d"][0]
        local = _inside(_env_dir("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"), rel, what)
        return local if local is not None else _from_label_studio(url, task_id, what)
    if url.startswith(_CLOUD):
        return _from_label_studio(url, task_id, what)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise LabelStudioRequestError(f"{what}: unsupported URL scheme {parsed.scheme!r}")
    root = image_root()
    if root is None:
        raise LabelStudioRequestError(f"{what}: plain file paths are refused; start the backend with "
                                      f"{IMAGE_ROOT_ENV} set to the folder they live in")
    local = _inside(root, url, what, relative=False)
    if local is None:
        raise LabelStudioRequestError(f"{what}: {url!r}: no such file", 404)
    return local


def load_task_image(url: Any, task_id: Any = None) -> LoadedImage:
    source = image_source(url, task_id)
    try:
        return load_image(source, name=f"task {task_id} image")
    except ImageError as e:
        raise LabelStudioRequestError(str(e)) from None
