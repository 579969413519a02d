"""``snapper train [--preset P] [--config X.yaml] [--set KEY=VALUE ...]``: train, resume, or
return a finished run. Under torchrun every rank runs this same command:

    torchrun --standalone --nproc_per_node=4 -m snapper.cli train --config run.yaml

With ``tracking.registered_model`` set (the default) and validation shards, rank 0 then
evaluates the best checkpoint and registers it, as the ``train-snapper`` flow does
(:func:`snapper.training.publish.evaluate_and_register`, the one registration path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os

from snapper.cli.common import add_set_option, apply_sets, fail, positive_int, run, setup_logging
from snapper.config import TrainConfig
from snapper.errors import ConfigError
from snapper.overrides import dump_yaml
from snapper.training.loop import check_config, train
from snapper.training.presets import PRESETS, build_config
from snapper.training.publish import evaluate_and_register

PROG = "snapper train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a Snapper model (resumes when --out-dir holds a train_state.pt). "
                    "Multi-GPU/multi-process: torchrun --nproc_per_node=N -m snapper.cli train ...")
    p.add_argument("--preset", choices=sorted(PRESETS), help="starting point, before --config and --set")
    p.add_argument("--config", help="YAML file with (part of) a TrainConfig")
    add_set_option(p, "TrainConfig")
    p.add_argument("--out-dir", help="where the run lives (wins over the config's out_dir)")
    p.add_argument("--init-from", help="fine-tune from this model: a checkpoint folder or models:/NAME@ALIAS|VERSION "
                                       "(its architecture and weights; e.g. with --preset finetune)")
    p.add_argument("--max-steps-this-run", type=positive_int, help="stop after this many steps (resumable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def resolve_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """preset -> --config -> --set -> --out-dir; a bad --set exits 2 naming the key."""
    cfg = build_config(args.preset, args.config)
    cfg = apply_sets(p, cfg, args.overrides)
    if args.init_from:
        cfg = dataclasses.replace(cfg, init_from=args.init_from)
    return dataclasses.replace(cfg, out_dir=args.out_dir) if args.out_dir else cfg


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        cfg = resolve_config(p, args)
    except (ConfigError, OSError) as e:  # the preset or the YAML file
        return fail(PROG, e)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    rank = int(os.environ.get("RANK", "0"))

    def body() -> int:
        check_config(cfg)  # before logging starts or anything is written
        setup_logging()
        if rank != 0:  # one log, not one per process
            logging.getLogger("snapper").setLevel(logging.WARNING)
        result = train(cfg, max_steps_this_run=args.max_steps_this_run)
        if rank != 0:
            return 0
        out = result.to_json()
        if result.steps >= cfg.steps or result.stopped_early:  # a finished run: evaluated, then registered
            out["registered"] = evaluate_and_register(cfg, result.best_checkpoint, result.mlflow_run_id,
                                                      result.steps, args.preset)
        print(json.dumps(out, indent=2))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
