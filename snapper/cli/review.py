"""``snapper review``: a person checks the doubtful boxes in Label Studio; the corrections come back as gold.

    snapper review push OUT_DIR --images IMAGES --project NAME [--label-studio URL] [--image-url PREFIX | --upload]
    snapper review pull OUT_DIR --project NAME [--label-studio URL]

``OUT_DIR`` is the output folder of ``snapper batch-snap`` (its review list, ``review.csv``, and
with ``--review-budget`` the edges to point at) or of ``snapper audit``. The API key comes from
``LABEL_STUDIO_API_KEY``; the server from ``--label-studio``, else ``LABEL_STUDIO_URL``, else
http://127.0.0.1:8080. ``pull`` writes ``OUT_DIR/review/`` (:mod:`snapper.review.pull`); its
``gold.json`` and ``rough.json`` go straight to ``snapper adapt`` and ``snapper noise-report``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from snapper.cli.common import run
from snapper.integrations.labelstudio_api import LabelStudioClient
from snapper.review.pull import pull
from snapper.review.push import push
from snapper.review.tasks import GOLD_JSON, REVIEW_DIR, ROUGH_JSON, load_batch_output

PROG = "snapper review"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Send the doubtful boxes of a batch-snap or audit output to "
                                "Label Studio (push) and bring the reviewed boxes back as gold (pull).")
    sub = p.add_subparsers(dest="action", required=True)
    for name, desc in (("push", "import one task per image with boxes to review (idempotent)"),
                       ("pull", "export the submitted reviews; write OUT_DIR/review/ (every annotation accounted for)")):
        s = sub.add_parser(name, help=desc, description=desc)
        s.add_argument("out_dir", help="output folder of `snapper batch-snap` or `snapper audit`")
        s.add_argument("--project", required=True, help="Label Studio project title (push creates it when missing)")
        s.add_argument("--label-studio", default=None, metavar="URL",
                       help="Label Studio URL (default: $LABEL_STUDIO_URL, else http://127.0.0.1:8080)")
        if name == "push":
            s.add_argument("--images", required=True, help="the images folder the batch run read")
            where = s.add_mutually_exclusive_group()
            where.add_argument("--image-url", default=None, metavar="PREFIX",
                               help="URL prefix Label Studio loads the images from (PREFIX + file_name); default: its "
                                    "local-files storage under $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
            where.add_argument("--upload", action="store_true",
                               help="upload the images of the new tasks into the project (for a Label Studio that "
                                    "cannot read this machine's disk; each image once)")
    return p


def _push_lines(res: Any, out_dir: str, project: str) -> list[str]:
    lines = [(f"{PROG} push: {res.boxes} boxes on {len(res.imported) + len(res.already)} images -> project "
              f"{project!r} (id {res.project_id}{', created' if res.project_created else ''}): "
              f"{len(res.imported)} tasks imported, {len(res.already)} already there")]
    if res.not_pushable:
        lines.append(f"  {len(res.not_pushable)} boxes cannot be shown (listed in {out_dir}/{REVIEW_DIR}/push.json): "
                     + "; ".join(f"#{k} {v}" for k, v in list(res.not_pushable.items())[:3]))
    lines.append(f"  when reviewed: snapper review pull {out_dir} --project {project!r}")
    return lines


def _pull_lines(s: dict[str, Any], out_dir: str) -> list[str]:
    c = s["counts"]
    review = {k: v for k, v in c.items() if k != "not_flagged" and v}
    where = f"{out_dir}/{REVIEW_DIR}"
    return [f"{PROG} pull: {s['annotations']} annotations: {c['not_flagged']} not flagged (snapped box kept); "
            + ", ".join(f"{k} {v}" for k, v in review.items()),
            (f"  gold {s['gold']} boxes on {s['gold_images']} images -> {where}/{GOLD_JSON}; rough boxes of "
             f"{s['rough_pairs']} of them -> {where}/{ROUGH_JSON}; all annotations -> {where}/reviewed.json"),
            f"  next: snapper adapt {where}/{GOLD_JSON} IMAGES --rough {where}/{ROUGH_JSON} --name NAME"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        batch = load_batch_output(args.out_dir)
        client = LabelStudioClient(args.label_studio)
        if args.action == "push":
            res = push(batch, args.images, client, args.project, args.image_url, args.upload)
            print("\n".join(_push_lines(res, args.out_dir, args.project)))
            return 0
        summary = pull(batch, client, args.project)
        for line in summary["problems"]:
            print(f"{PROG} pull: warning: {line}", file=sys.stderr)
        print("\n".join(_pull_lines(summary, args.out_dir)))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
