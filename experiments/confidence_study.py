"""Which per-edge confidence best finds the edges that need review?

Runs a checkpoint on held-out shards (the evaluation protocol: deterministic jitter per
annotation id) and scores candidate confidences by how many of the *bad* edges (>= 3 px off in
original pixels) the lowest-confidence k% catches (random flagging catches k%):

* ``mass_r{1,2,3}``: probability mass within r bins (input px) of the peak (r=2 was the default);
* ``mass_3px``: probability mass within 3 *original* px of the predicted edge, i.e. the model's
  own probability that the edge passes the 3 px test (the radius in bins depends on the
  window's scale, so large boxes, where one input px is several original px, are not
  over-trusted);
* ``max_prob`` and ``neg_entropy``.

    .venv/bin/python experiments/confidence_study.py CHECKPOINT SHARDS... [--out results.csv]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapper.config import JitterConfig  # noqa: E402
from snapper.crop import CropGeometry  # noqa: E402
from snapper.data.eval_stream import eval_batches  # noqa: E402
from snapper.data.manifest import expand_urls  # noqa: E402
from snapper.models.checkpoint import load_checkpoint  # noqa: E402
from snapper.models.edges import decode_edges, mass_within  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--bad-px", type=float, default=3.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    model, mcfg, _ = load_checkpoint(args.checkpoint)
    model.eval()
    S = mcfg.input_size
    cands: dict[str, list[np.ndarray]] = {}
    devs = []
    urls = [u for s in args.shards for u in expand_urls(s)]
    with torch.inference_mode():
        for b in eval_batches(urls, mcfg, JitterConfig(), seed=0, batch_size=64):
            logits = model(b["image"]).float()
            pos, conf = decode_edges(logits, S)
            win = b["window"].numpy() if torch.is_tensor(b["window"]) else np.asarray(b["window"])
            sizes = b["image_size"].numpy() if torch.is_tensor(b["image_size"]) else np.asarray(b["image_size"])
            pred = CropGeometry(win, S).to_original(pos.double().numpy(), sizes[:, 0], sizes[:, 1])
            true = b["true"].numpy() if torch.is_tensor(b["true"]) else np.asarray(b["true"])
            devs.append(np.abs(pred - true))  # per edge (left, top, right, bottom), original px
            p = F.softmax(logits, -1)
            nb = p.shape[-1]
            idx = torch.arange(nb).view(1, 1, nb)
            peak = p.argmax(-1, keepdim=True)
            for r in (1, 2, 3):
                cands.setdefault(f"mass_r{r}", []).append(((p * ((idx - peak).abs() <= r)).sum(-1)).numpy())
            cands.setdefault("max_prob", []).append(p.amax(-1).numpy())
            cands.setdefault("neg_entropy", []).append((p * p.clamp_min(1e-12).log()).sum(-1).numpy())
            # orig px per input px for each edge: x edges use the window width, y edges the height
            ww = torch.from_numpy(win[:, 2] - win[:, 0]).float() / S
            wh = torch.from_numpy(win[:, 3] - win[:, 1]).float() / S
            scale = torch.stack([ww, wh, ww, wh], dim=1)
            cands.setdefault("mass_3px", []).append(mass_within(p, pos, S, args.bad_px / scale).numpy())
    dev = np.concatenate(devs).reshape(-1)
    bad = dev >= args.bad_px
    rows = []
    rng = np.random.default_rng(0)
    for name, vals in cands.items():
        c = np.concatenate(vals).reshape(-1)
        order = np.lexsort((rng.random(len(c)), c))
        for k in (5, 10, 20):
            n = int(round(len(c) * k / 100))
            caught = bad[order[:n]].sum() / max(bad.sum(), 1) * 100
            rows.append({"confidence": name, "flag_pct": k, "caught_pct": round(caught, 1),
                         "lift": round(caught / k, 2)})
    df = pd.DataFrame(rows).pivot(index="confidence", columns="flag_pct", values="caught_pct")
    print(f"{len(dev)} edges, {bad.mean() * 100:.1f}% bad (>= {args.bad_px} px); % of bad edges caught by flagging "
          f"the lowest-confidence k% (random: k%)")
    print(df.to_string())
    if args.out:
        df.to_csv(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
