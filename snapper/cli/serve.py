"""``snapper serve``: the champion (or any registered model) behind MLflow's scoring app.

    snapper serve                       # models:/snapper@champion on http://127.0.0.1:5001
    snapper serve --model models:/snapper/3 --port 5002
    snapper serve --image-root /data/images   # also accept image_path rows inside that folder

The model reference is pinned to its version before the server starts, so the version
printed is the version served. The process becomes the server (uvicorn on
:mod:`snapper.mlops.scoring_app`), so ``kill`` stops it with nothing left behind. Request
bodies over ``--max-body-mb`` get HTTP 413. The request and answer schema: :mod:`snapper.mlops.pyfunc`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from snapper.cli.common import fail, positive_float, positive_int, run
from snapper.errors import BadModelError, BadOptionError
from snapper.imageio import IMAGE_ROOT_ENV, image_root
from snapper.integrations.serve import DEFAULT_MAX_BODY, DEFAULT_PORT, LOOPBACK, serve_command, serve_env
from snapper.mlops.registry import model_dir
from snapper.mlops.tracking import configure
from snapper.models.reference import DEFAULT_MODEL, pin_model_ref

PROG = "snapper serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve a registered snapper model over HTTP "
                                "(MLflow's model server, this environment's packages).")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered model: models:/NAME@ALIAS or models:/NAME/VERSION (default {DEFAULT_MODEL})")
    p.add_argument("--host", default=LOOPBACK, help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT)
    p.add_argument("--workers", type=positive_int, default=1, help="server processes (each loads the model)")
    p.add_argument("--timeout", type=positive_int, default=60, help="seconds one request may take")
    p.add_argument("--max-body-mb", type=positive_float, default=DEFAULT_MAX_BODY / (1 << 20),
                   help="largest request body accepted, in MiB (default %(default)g: a few photos); "
                        "larger requests get HTTP 413")
    p.add_argument("--image-root", help=f"a folder whose files requests may name in image_path (default: "
                   f"${IMAGE_ROOT_ENV}; unset = image bytes only)")
    return p


def pinned(ref: str) -> tuple[str, str]:
    """(``models:/NAME/VERSION``, a description) for a ``models:/`` reference: the version is
    fixed at start, so moving the alias later does not change what a running server serves."""
    if not ref.startswith("models:/"):
        raise BadModelError(f"--model {ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    uri = pin_model_ref(ref)
    name, _, version = uri[len("models:/"):].rpartition("/")
    alias = ref.partition("@")[2]
    return uri, f"{name} version {version}" + (f" (@{alias})" if alias else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        uri = configure()
        root = image_root(args.image_root)
        model_uri, what = pinned(args.model)
        with socket.socket() as sock:
            if sock.connect_ex((args.host, args.port)) == 0:
                raise BadOptionError(f"port {args.port} on {args.host} is in use; pick another with --port")
        model_path = model_dir(model_uri)
        cmd = serve_command(args.port, args.host, args.workers, args.timeout)
        env = serve_env(os.environ, uri, root, model_path, int(args.max_body_mb * (1 << 20)), args.timeout)
        url = f"http://{args.host}:{args.port}/invocations"
        print(f"{PROG}: {what} from {uri}\n  POST {url} (schema: README 'Serving'); "
              f"image paths: {'inside ' + str(root) if root else 'refused'}; body limit {args.max_body_mb:g} MiB; "
              "Ctrl-C stops it", flush=True)
        os.execve(cmd[0], cmd, env)  # this process becomes the server: a signal to it stops the server
        return 0  # unreachable

    if sys.platform == "win32":  # os.execve replaces the process only on POSIX
        return fail(PROG, "serving needs Linux or macOS")
    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
