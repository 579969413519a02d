"""``snapper cvat-tighten --task ID``: snap the rectangles of a CVAT task through the CVAT SDK
and write a report; ``--apply`` patches the changed rectangles back (without it nothing is
sent). Credentials come from environment variables, never from the command line
(:mod:`snapper.integrations.cvat`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from snapper.cli.common import fail, positive_int, run, setup_logging
from snapper.config import BatchConfig, SnapSettings
from snapper.inference.snap import Snapper
from snapper.integrations import cvat
from snapper.models.reference import DEFAULT_MODEL, resolve_model

PROG = "snapper cvat-tighten"
HOST_ENV = "CVAT_HOST"
DEFAULT_HOST = "http://localhost:8080"
TOKEN_ENV = "CVAT_ACCESS_TOKEN"  # the SDK's own convention, used when no credentials are named
PASSWORD_ENV = "CVAT_PASSWORD"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Tighten the rectangles of a CVAT task: a dry-run report by default, "
                               "--apply to patch the changed rectangles back.")
    p.add_argument("--task", type=positive_int, required=True, help="CVAT task id")
    p.add_argument("--host", default=os.environ.get(HOST_ENV, DEFAULT_HOST),
                   help=f"CVAT server URL (default ${HOST_ENV} or {DEFAULT_HOST})")
    p.add_argument("--user", help="log in as this user; the password is read from --password-env")
    p.add_argument("--password-env", default=PASSWORD_ENV, metavar="VAR",
                   help=f"environment variable holding --user's password (default {PASSWORD_ENV})")
    p.add_argument("--token-env", metavar="VAR",
                   help=f"environment variable holding a personal access token (default without --user: {TOKEN_ENV})")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint folder, or an MLflow model reference (default the champion)")
    p.add_argument("--device", default="auto")
    p.add_argument("--passes", type=int, choices=(1, 2), default=1,
                   help="2 adds the zoom-in pass (models trained with model.zoom)")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="turn the broken-box guard off (snap.guard=false): collapsed boxes and far-moved edges "
                        "are sent as the model decoded them instead of keeping the rough box/edge")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="report file, .csv or .json (default cvat-task-ID.csv)")
    p.add_argument("--apply", action="store_true",
                   help="send the changed rectangles to CVAT (PATCH action=update); without it nothing is sent")
    return p


def credentials(args: argparse.Namespace) -> tuple[dict[str, str], str | None]:
    """``connect`` keyword arguments from the environment, or the one-line problem."""
    if args.user and args.token_env:
        return {}, "give --user (password in an environment variable) or --token-env, not both"
    if args.user:
        password = os.environ.get(args.password_env)
        if not password:
            return {}, f"--user {args.user}: set the password in ${args.password_env} (or name another --password-env)"
        return {"user": args.user, "password": password}, None
    var = args.token_env or TOKEN_ENV
    token = os.environ.get(var)
    if not token:
        hint = "" if args.token_env else f"; or give --user with the password in ${PASSWORD_ENV}"
        return {}, f"no access token: set ${var}{hint}"
    return {"token": token}, None


def report_problem(path: Path) -> str | None:
    if path.suffix.lower() not in cvat.REPORT_SUFFIXES:
        return f"must end in {' or '.join(cvat.REPORT_SUFFIXES)}"
    if path.is_dir():
        return "is a folder"
    if not path.resolve().parent.is_dir():
        return f"folder {path.parent} does not exist"
    return None


def describe(report: cvat.TightenReport, path: Path) -> str:
    s = report.summary()
    st = s["status"]
    skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items()) or "none"
    action = (f"sent {s['sent']} to {report.host}" if report.applied
              else f"dry run, nothing sent (--apply sends {st['snapped']})")
    return (f"task {report.task_id}: {s['n_shapes']} shapes: {st['snapped']} snapped, {st['unchanged']} unchanged, "
            f"{st['skipped']} skipped ({skipped}), {st['conflict']} conflicts; {s['needs_review']} need review; "
            f"{action}; report {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    creds, problem = credentials(args)
    if problem:
        return fail(PROG, problem)
    report_path = Path(args.report or f"cvat-task-{args.task}.csv")
    problem = report_problem(report_path)
    if problem:
        return fail(PROG, f"--report {report_path}: {problem}")
    if not cvat.sdk_available():
        return fail(PROG, "cvat-sdk is not installed; install the extra: pip install -e '.[cvat]'")

    def body() -> int:
        setup_logging()
        client = cvat.connect(args.host, **creds)
        with client:
            cvat.open_task(client, args.task)  # a missing task or refused credentials before the model loads
            cfg = BatchConfig(snap=SnapSettings(device=args.device, passes=args.passes, guard=args.guard))
            snapper = Snapper.from_checkpoint(resolve_model(args.model), cfg.snap)
            report = cvat.tighten_task(client, args.task, snapper, cfg, apply=args.apply)
        cvat.write_report(report, report_path)
        print(describe(report, report_path))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
