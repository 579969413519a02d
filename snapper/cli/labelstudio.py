"""``snapper label-studio``: the champion (or any model) as a Label Studio ML backend.

    snapper label-studio                          # models:/snapper@champion on http://127.0.0.1:9090
    snapper label-studio --model runs/demo/best --port 9091
    snapper label-studio --host 0.0.0.0           # reachable from another machine or a container

Connect it in Label Studio: project Settings -> Model -> Connect Model, URL
``http://127.0.0.1:9090``, "Interactive preannotations" on; the labeling config's
RectangleLabels tag needs ``smart="true"``. Images are read as :mod:`snapper.integrations.labelstudio`
says (Label Studio's data folders, or downloaded with ``LABEL_STUDIO_URL`` +
``LABEL_STUDIO_API_KEY``). The model is loaded once, before the server listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import torch
from werkzeug.serving import run_simple

from snapper.cli.common import (
    add_buffer_ratio_option,
    add_flip_option,
    positive_float,
    positive_int,
    run,
    setup_logging,
)
from snapper.errors import BadOptionError
from snapper.integrations.labelstudio import (
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    DEVICE_ENV,
    MODEL_ENV,
    create_app,
    load_backend,
)
from snapper.integrations.labelstudio_loop import LOOP_ENV, ReviewLoop, load_loop
from snapper.models.reference import DEFAULT_MODEL

PROG = "snapper label-studio"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve a snapper model as a Label Studio ML backend "
                                "(interactive snapping of drawn rectangles, and pre-annotation).")
    p.add_argument("--model", default=None, help=f"model reference: models:/NAME@ALIAS, models:/NAME/VERSION or a "
                   f"checkpoint folder (default: ${MODEL_ENV}, else {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT)
    p.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1, mps or auto (default: ${DEVICE_ENV}, else cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    add_buffer_ratio_option(p)
    p.add_argument("--passes", type=int, choices=(1, 2), default=1,
                   help="2: add the zoom-in pass (models trained with model.zoom); default 1")
    add_flip_option(p)
    p.add_argument("--max-body-mb", type=positive_float, default=DEFAULT_MAX_BODY / (1 << 20),
                   help="largest request body accepted, in MiB (default %(default)g); larger ones get HTTP 413")
    p.add_argument("--review-loop", default=None, metavar="LOOP.json",
                   help=f"count submitted reviews on /webhook and start the review-snapper deployment past a threshold "
                        f"(snapper.integrations.labelstudio_loop; default: ${LOOP_ENV})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        setup_logging()
        with socket.socket() as sock:
            if sock.connect_ex((args.host, args.port)) == 0:
                raise BadOptionError(f"port {args.port} on {args.host} is in use; pick another with --port")
        if args.threads:
            torch.set_num_threads(args.threads)
        backend = load_backend(args.model, args.device, args.buffer_ratio, args.passes, args.flip)
        loop_file = args.review_loop or os.environ.get(LOOP_ENV)
        loop = ReviewLoop(load_loop(loop_file)) if loop_file else None
        app = create_app(backend, int(args.max_body_mb * (1 << 20)), loop)
        if loop:
            print(f"{PROG}: review loop on for {', '.join(map(repr, loop.cfg.projects))} -> {loop.cfg.deployment}")
        print(f"{PROG}: {backend.model_version} on {backend.snapper.device}\n  Label Studio -> project Settings -> "
              f"Model -> Connect Model: http://{args.host}:{args.port} (interactive preannotations on); "
              "Ctrl-C stops it", flush=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            run_simple(args.host, args.port, app, threaded=True)
        except KeyboardInterrupt:
            pass
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
