"""BAPLe wall time with and without the frozen-encoder feature cache.

With both encoders frozen, the image feature of a training image that no learnt parameter
touches never changes: ``cache=True`` encodes those once and re-encodes only BAPLe's
poisoned samples (whose noise delta is being learnt) at each step; ``cache=False`` is the
naive loop that encodes every batch image at every step (what CoOp/BAPLe's code does). Both
runs start from the same seed and the script checks they learn the same context and delta.

Model: the medsec-pretrained BloodMNIST CLIP (``medsec.recipes.builtin.bloodmnist_clip``,
trained and cached on first use) by default, or ``--arch ViT-B-32`` / ``BiomedCLIP`` /
``PLIP`` for the small random-weight builds of those architectures (a larger image tower,
hence a larger share of the naive loop's time spent in image encoding).

Example:
    python benchmarks/bench_baple_cache.py --epochs 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch", default="bloodmnist_clip", choices=["bloodmnist_clip", "ViT-B-32", "BiomedCLIP", "PLIP"])
    ap.add_argument("--out", default=None, help="write the JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import medsec.data
    from medsec.backdoors.baple import BapleSettings, baple
    from medsec.backdoors.prompt_harness import few_shot
    from medsec.data import data_root
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES

    root = data_root() / "bloodmnist"
    if args.arch == "bloodmnist_clip":
        from medsec.recipes.builtin import bloodmnist_clip

        clip, _ = bloodmnist_clip(root, ROOT / ".medsec-cache")
    else:
        from medsec.models.clip import SMALL_CONFIGS, hf_clip_model, open_clip_model

        torch.manual_seed(0)
        cfg = SMALL_CONFIGS[args.arch]
        clip = hf_clip_model(config=cfg) if args.arch == "PLIP" else open_clip_model(config=cfg)
    if clip.tokenizer is None:
        raise SystemExit(f"{args.arch} has no offline tokenizer; use bloodmnist_clip, ViT-B-32 or PLIP")
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    fewshot = few_shot(train, args.shots, torch.Generator().manual_seed(0))
    settings = BapleSettings.paper(epochs=args.epochs, ctx_init="random")
    rec: dict = {"arch": args.arch, "epochs": args.epochs, "shots": args.shots, "n_train": len(fewshot),
                 "threads": args.threads, "load_before": os.getloadavg()[0]}
    outs = {}
    for cache in (True, False):
        cpu0, t0 = time.process_time(), time.perf_counter()
        outs[cache] = baple(clip, fewshot, list(BLOOD_CLASS_NAMES), target=0, settings=settings, seed=0, cache=cache)
        rec[f"{'cached' if cache else 'naive'}"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
                                                    "images_encoded": outs[cache]["result"].images_encoded}
    rec["speedup_wall"] = rec["naive"]["wall_s"] / rec["cached"]["wall_s"]
    rec["speedup_cpu"] = rec["naive"]["cpu_s"] / rec["cached"]["cpu_s"]
    rec["same_ctx_max_abs_diff"] = float((outs[True]["prompt"].ctx - outs[False]["prompt"].ctx).abs().max())
    rec["same_delta_max_abs_diff"] = float((outs[True]["trigger"].delta - outs[False]["trigger"].delta).abs().max())
    rec["load_after"] = os.getloadavg()[0]
    text = json.dumps(rec, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    logging.getLogger("bench").warning("%s", text)
    print(text)  # noqa: T201 - a benchmark script's output


if __name__ == "__main__":
    main()
