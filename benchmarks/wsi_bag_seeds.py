"""Seed spread of the BloodMNIST MIL-bag numbers in docs/wsi.md (not a speed benchmark).

``effect``: the protocol of ``tests/wsi/test_wsi_effect.py`` (platelet-positive bags of 100-500
tiles, single-platelet test bags, three ABMIL head seeds, label-free PGD-10 at 8/255 on
rho = 0.1%) on encoders of the BloodMNIST recipe trained with other seeds, to show that the
asserted drop does not hang on one encoder (the test itself uses the recipe's seed 0).

``reliability``: clean slide accuracy of MIL heads at 100-2,000 tiles per bag (80 train / 60
test bags, 1-3 positives, heads seeds 0-2), per bag task.

    PYTHONPATH=src python benchmarks/wsi_bag_seeds.py effect --encoder-seeds 0 1 2
    PYTHONPATH=src python benchmarks/wsi_bag_seeds.py reliability --positive 7 --heads transmil abmil max
    PYTHONPATH=src python benchmarks/wsi_bag_seeds.py reliability --positive 4 --heads transmil abmil

Encoders of other seeds are trained once into ``--cache`` (about 3 min each on 2 CPU cores).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import medsec.data
from medsec.data import data_root
from medsec.recipes.builtin import BLOODMNIST_RECIPE, bloodmnist_classifier
from medsec.wsi import TensorTiles, WSIBudget, attack_slide, from_classifier, make_bags
from medsec.wsi.mil import create_head, evaluate_mil, train_mil

HEAD_PARAMS = {"transmil": {"dim": 32, "heads": 2}}


def _encoder(seed: int, cache: Path):
    root = data_root() / "bloodmnist"
    model = bloodmnist_classifier(root, cache, {**BLOODMNIST_RECIPE, "seed": seed})
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
    return from_classifier(model, "medsec_bloodmnist"), train, test


def _heads(name: str, dim: int, bags: list[torch.Tensor], labels: torch.Tensor) -> list[torch.nn.Module]:
    heads = []
    for seed in range(3):
        torch.manual_seed(seed)
        h = create_head(name, dim, **HEAD_PARAMS.get(name, {}))
        heads.append(train_mil(h, bags, labels, generator=torch.Generator().manual_seed(seed)))
    return heads


def effect(args: argparse.Namespace) -> None:
    platelet = 7
    for enc_seed in args.encoder_seeds:
        enc, train, test = _encoder(enc_seed, args.cache)
        ftr, fte = enc.encode(train.images[:5000]), enc.encode(test.images)
        g = torch.Generator().manual_seed(0)
        btr = make_bags(train.labels[:5000].numpy(), [platelet], 80, 100, 500, 1, 3, generator=g)
        bte = make_bags(test.labels.numpy(), [platelet], 40, 100, 500, 1, 1, generator=g)
        feats = [fte[i] for i in bte.indices]
        for h_seed, head in enumerate(_heads("abmil", enc.dim, [ftr[i] for i in btr.indices], btr.labels)):
            for strategy in ("attention", "random"):
                adv, hits = [], 0
                ga = torch.Generator().manual_seed(1)
                for b, idx in enumerate(bte.indices):
                    res = attack_slide(enc, TensorTiles(test.images[idx]), feats[b], WSIBudget(0.001, 8 / 255), "pgd",
                                       strategy, head=head if strategy == "attention" else None, generator=ga)
                    hits += int(bte.key_mask(b, test.labels.numpy())[res.indices.numpy()].any())
                    adv.append(res.features_adv)
                print(json.dumps({"encoder_seed": enc_seed, "head_seed": h_seed, "strategy": strategy,
                                  "clean": evaluate_mil(head, feats, bte.labels)["accuracy"],
                                  "attacked": evaluate_mil(head, adv, bte.labels)["accuracy"],
                                  "platelet_attacked_in": hits}), flush=True)


def reliability(args: argparse.Namespace) -> None:
    enc, train, test = _encoder(args.encoder_seed, args.cache)
    ftr, fte = enc.encode(train.images), enc.encode(test.images)
    g = torch.Generator().manual_seed(0)
    btr = make_bags(train.labels.numpy(), [args.positive], 80, 100, 2000, 1, 3, generator=g)
    bte = make_bags(test.labels.numpy(), [args.positive], 60, 100, 2000, 1, 3, generator=g)
    tr, te = [ftr[i] for i in btr.indices], [fte[i] for i in bte.indices]
    for name in args.heads:
        t0 = time.perf_counter()
        for seed, head in enumerate(_heads(name, enc.dim, tr, btr.labels)):
            m = evaluate_mil(head, te, bte.labels)
            print(json.dumps({"positive": args.positive, "head": name, "seed": seed, "accuracy": m["accuracy"],
                              "auroc": m.get("auroc"), "seconds_for_3_seeds": time.perf_counter() - t0}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parents[1] / ".medsec-cache")
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("effect")
    e.add_argument("--encoder-seeds", type=int, nargs="+", default=[0, 1, 2])
    r = sub.add_parser("reliability")
    r.add_argument("--positive", type=int, default=7, choices=range(8), help="BloodMNIST class of the bag task")
    r.add_argument("--heads", nargs="+", default=["transmil", "abmil", "max"])
    r.add_argument("--encoder-seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    (effect if args.what == "effect" else reliability)(args)


if __name__ == "__main__":
    main()
