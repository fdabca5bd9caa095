"""Whole-slide attack cost: flat in the slide size at a fixed number of attacked tiles.

For bags of 1k, 10k and 100k tiles and a fixed k attacked tiles, time and peak memory of
medsec's attack (cached features for the untouched tiles; only the k tiles are read,
attacked and re-encoded) against a naive implementation that re-encodes the whole bag at
every attack step (the gradient still flows to the k tiles only). The naive run is
skipped for sizes where it would exceed ``--naive-max`` tiles.

    PYTHONPATH=src python benchmarks/bench_wsi.py --encoder small --sizes 1000 10000 100000 --k 10
    PYTHONPATH=src python benchmarks/bench_wsi.py --encoder vit_large --device cuda   # ViT-L/16, random weights

Prints one JSON line per measurement (and a Markdown table at the end).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

from medsec.wsi import WSIBudget, attack_slide
from medsec.wsi.attacks import deviation
from medsec.wsi.encoders import create_encoder
from medsec.wsi.mil import create_head


class LazyTiles:
    """N tiles generated on read from a seeded base set (a slide too big to hold)."""

    def __init__(self, n: int, size: int, base: int = 64) -> None:
        self.n = n
        self.base = torch.rand(base, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):  # type: ignore[no-untyped-def]
        ids = torch.as_tensor(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        return self.base[ids % self.base.shape[0]]


def build(name: str) -> torch.nn.Module:
    if name == "small":
        return create_encoder("medsec_bloodmnist")
    if name == "vit_large":
        return create_encoder("uni", pretrained=False, overrides={"img_size": 224})
    return create_encoder(name)


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive(encoder, tiles, idx, head, steps, eps, batch, device):  # type: ignore[no-untyped-def]
    """Re-encode the whole bag every step: PGD on the k tiles, loss = feature deviation,
    the other N - k tiles re-encoded without gradients each step, then the head."""
    x = tiles[idx.numpy()].to(device)
    with torch.no_grad():
        ref = encoder(x)
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        z = encoder((x + delta).clamp(0, 1))
        with torch.no_grad():  # the rest of the bag, re-encoded
            rest = [encoder(tiles[np.arange(i, min(len(tiles), i + batch))].to(device)) for i in range(0, len(tiles), batch)]
            bag = torch.cat(rest)
        bag = bag.clone()
        bag[idx] = z
        head(bag)
        (g,) = torch.autograd.grad(deviation(z, ref).sum(), delta)
        delta = (delta.detach() + eps / 4 * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="small")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive-max", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    enc = build(args.encoder).to(args.device).eval()
    size = enc.spec.size[0] if enc.spec.size else 224
    head = create_head("abmil", enc.dim).to(args.device).eval()
    rows = []
    # medsec first over all sizes: on CPU peak memory is the process's max RSS so far (monotone)
    for impl in ("medsec", "naive"):
        for n in args.sizes:
            tiles = LazyTiles(n, size)
            feats = torch.randn(n, enc.dim)  # the cached clean features (their values do not change the cost)
            budget = WSIBudget(rho=args.k / n, eps=8 / 255)
            idx = torch.arange(args.k) * (n // args.k)
            if impl == "naive" and n > args.naive_max:
                continue
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if impl == "medsec":
                res = attack_slide(enc, tiles, feats, budget, "pgd", indices=idx, steps=args.steps,
                                   generator=torch.Generator().manual_seed(0))
                head(res.features_adv.to(args.device))
            else:
                naive(enc, tiles, idx, head, args.steps, 8 / 255, args.batch, args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            row = {"impl": impl, "n_tiles": n, "k": args.k, "steps": args.steps, "encoder": args.encoder,
                   "seconds": round(time.perf_counter() - t0, 3), "peak_mb": round(peak_mb(args.device), 1),
                   "device": args.device, "torch": torch.__version__, "platform": platform.platform()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| impl | tiles | k | steps | seconds | peak MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['n_tiles']} | {r['k']} | {r['steps']} | {r['seconds']} | {r['peak_mb']} |")


if __name__ == "__main__":
    main()
