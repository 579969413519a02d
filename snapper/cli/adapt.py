"""``snapper adapt GOLD.json IMAGES --name snapper-<domain> [--rough ROUGH.json] [--base REF]``:
fine-tune a model onto a team's own gold boxes and register it only as champion when it is
better on gold images it never saw (:mod:`snapper.training.adapt`; the ``adapt-snapper``
flow runs the same stages as Prefect tasks).

Prints the split, the annotators' noise (with ``--rough``), then Table 1 on the report split
(identity, base, gold-only, adapted) and what the registry did. Writes ``<out-dir>/adapt.json``.
"""

from __future__ import annotations

import argparse

from snapper.cli.common import add_set_option, positive_int, run, setup_logging
from snapper.config import ADAPT_NOISE, AdaptConfig
from snapper.errors import ConfigError
from snapper.models.reference import DEFAULT_MODEL
from snapper.training.adapt import adapt, scores_line

PROG = "snapper adapt"


def build_parser() -> argparse.ArgumentParser:
    d = AdaptConfig()
    p = argparse.ArgumentParser(prog=PROG, description="Fine-tune a model on your gold boxes; it becomes --name's "
                                "champion only when it beats the base on held-out gold images.")
    p.add_argument("gold", help="COCO file of gold (corrected) boxes")
    p.add_argument("images", help="folder of the gold file's images")
    p.add_argument("--name", required=True, help="registered model to add the adapted version to, e.g. snapper-shelves")
    p.add_argument("--rough", help="COCO file of the annotators' rough boxes of the same objects: the model trains on "
                                   "their measured noise and the report split is scored on them")
    p.add_argument("--base", default=DEFAULT_MODEL, help="model to fine-tune from (default %(default)s)")
    p.add_argument("--out-dir", help="where the shards, runs and report go (default runs/adapt/<name>)")
    p.add_argument("--steps", type=positive_int, help="fine-tuning steps (default: the finetune preset's)")
    p.add_argument("--noise", choices=ADAPT_NOISE, default=d.noise,
                   help="rough boxes to train on: measured (from --rough), paper (the paper's jitter); auto = measured "
                        "when --rough is given")
    p.add_argument("--select-fraction", type=float, default=d.select_fraction, help="gold images for checkpoint selection")
    p.add_argument("--report-fraction", type=float, default=d.report_fraction, help="gold images held out for the report")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split by image")
    replay = p.add_mutually_exclusive_group()
    replay.add_argument("--replay", nargs="+", default=None, metavar="SHARDS",
                        help="shards to train on beside the gold, so the fine-tune keeps what the base knew "
                             "(rehearsal): shard globs/folders/manifests, or 'base' for the shards the base was "
                             "trained on (default: those, when they are all files on this machine)")
    replay.add_argument("--no-replay", dest="replay", action="store_const", const=[], help="fine-tune on the gold alone")
    p.add_argument("--replay-share", type=float, default=d.replay_share,
                   help="share of the training draws from the --replay shards (default %(default)g; the rest is gold)")
    p.add_argument("--no-gold-only", action="store_true", help="skip the gold-only baseline (halves the time)")
    p.add_argument("--no-register", action="store_true", help="compare only; register nothing")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    add_set_option(p, "TrainConfig of the fine-tune (finetune preset)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        cfg = AdaptConfig(gold=args.gold, images=args.images, name=args.name, rough=args.rough, base=args.base,
                          out_dir=args.out_dir, select_fraction=args.select_fraction,
                          report_fraction=args.report_fraction, seed=args.seed, steps=args.steps, noise=args.noise,
                          gold_only=not args.no_gold_only, register=not args.no_register, device=args.device,
                          overrides=list(args.overrides), replay=args.replay, replay_share=args.replay_share)
    except ConfigError as e:
        p.error(str(e))

    def body() -> int:
        setup_logging()
        res = adapt(cfg)
        print(res["table_md"])
        print(scores_line(res))
        reg = res["registered"]
        if reg:
            verdict = "is the champion" if reg["champion"] else "is not the champion"
            print(f"registered {reg['name']} version {reg['version']}: {verdict} ({reg['champion_check']})")
            print(f"snap with it: --model models:/{reg['name']}@champion" if reg["champion"] else
                  f"keep snapping with {res['base']}")
        print(f"-> {cfg.out_dir or 'runs/adapt/' + cfg.name}/adapt.json")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
