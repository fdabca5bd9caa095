"""Whole-slide attack cost: flat in the slide size at a fixed number of attacked tiles.

For bags of 1k, 10k and 100k tiles and a fixed k attacked tiles, time and peak memory of
medsec's attack (cached features for the untouched tiles; only the k tiles are read,
attacked and re-encoded) against a naive implementation that re-encodes the whole bag at
every attack step (the gradient still flows to the k tiles only).

Each (implementation, size) runs in its own child process, so the CPU peak memory (the
child's max RSS) belongs to that measurement alone. The naive attack is timed on
``--naive-steps`` of its ``--steps`` steps (plus the reference encoding) and the full
time is extrapolated linearly (``extrapolated: true`` in its row); its cost per step is
constant (every step re-encodes the same N tiles), so the extrapolation is exact up to
timing noise. Where one naive step over all N tiles is itself too slow,
``--naive-encode-max M`` re-encodes only M tiles per step and scales the time by N / M
(re-encoding is linear in N); the full (N, D) bag is still allocated, so the peak memory
is close to the real one. Peak memory of the naive run is that of the measured steps,
which is its steady state.

    PYTHONPATH=src python benchmarks/bench_wsi.py --encoder small --sizes 1000 10000 100000 --k 10 --naive-steps 1
    PYTHONPATH=src python benchmarks/bench_wsi.py --impls naive --sizes 100000 --naive-steps 1 --naive-encode-max 10000
    PYTHONPATH=src python benchmarks/bench_wsi.py --encoder vit_large --device cuda   # ViT-L/16, random weights

Prints one JSON line per measurement (and a Markdown table at the end).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
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


def naive(encoder, tiles, idx, head, steps, eps, batch, device, encode_max=None):  # type: ignore[no-untyped-def]
    """Re-encode the whole bag every step: PGD on the k tiles, loss = feature deviation,
    the other N - k tiles re-encoded without gradients each step, then the head.
    With ``encode_max`` < N only that many tiles are re-encoded per step (the rest of the
    (N, D) bag is left as zeros, so its memory is still allocated) and the caller
    extrapolates the time. Returns the adversarial tiles and the wall time of each step."""
    x = tiles[idx.numpy()].to(device)
    with torch.no_grad():
        ref = encoder(x)
    delta = torch.empty_like(x).uniform_(-eps, eps)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        delta.requires_grad_(True)
        z = encoder((x + delta).clamp(0, 1))
        with torch.no_grad():  # the rest of the bag, re-encoded
            m = len(tiles) if encode_max is None else min(len(tiles), encode_max)
            rest = [encoder(tiles[np.arange(i, min(m, i + batch))].to(device)) for i in range(0, m, batch)]
            bag = torch.cat(rest)
            if m < len(tiles):
                bag = torch.cat([bag, bag.new_zeros(len(tiles) - m, bag.shape[1])])
        bag = bag.clone()
        bag[idx] = z
        head(bag)
        (g,) = torch.autograd.grad(deviation(z, ref).sum(), delta)
        delta = (delta.detach() + eps / 4 * g.sign()).clamp(-eps, eps)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return (x + delta).clamp(0, 1), times


def measure(args: argparse.Namespace, impl: str, n: int) -> dict:
    torch.set_num_threads(args.threads)
    enc = build(args.encoder).to(args.device).eval()
    size = enc.spec.size[0] if enc.spec.size else 224
    head = create_head("abmil", enc.dim).to(args.device).eval()
    tiles = LazyTiles(n, size)
    feats = torch.randn(n, enc.dim)  # the cached clean features (their values do not change the cost)
    budget = WSIBudget(rho=args.k / n, eps=8 / 255)
    idx = torch.arange(args.k) * (n // args.k)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cpu0, t0 = time.process_time(), time.perf_counter()
    extra: dict = {}
    if impl == "medsec":
        res = attack_slide(enc, tiles, feats, budget, "pgd", indices=idx, steps=args.steps,
                           generator=torch.Generator().manual_seed(0))
        head(res.features_adv.to(args.device))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    else:
        measured = min(args.steps, args.naive_steps)
        enc_max = args.naive_encode_max if args.naive_encode_max and n > args.naive_encode_max else None
        _, times = naive(enc, tiles, idx, head, measured, 8 / 255, args.batch, args.device, enc_max)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        scale = n / enc_max if enc_max else 1.0  # a step is dominated by re-encoding the bag, linear in N
        per_step = float(np.mean(times)) * scale
        seconds = wall * scale + per_step * (args.steps - measured)
        cpu = cpu * scale * args.steps / measured
        extra = {"measured_steps": measured, "seconds_per_step": round(per_step, 3),
                 "extrapolated": measured < args.steps or enc_max is not None,
                 "encoded_per_step": enc_max or n}
    return {"impl": impl, "n_tiles": n, "k": args.k, "steps": args.steps, "encoder": args.encoder,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "peak_mb": round(peak_mb(args.device), 1),
            **extra, "device": args.device, "threads": args.threads, "torch": torch.__version__,
            "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="small")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--naive-steps", type=int, default=2, help="naive steps actually run (the rest extrapolated)")
    ap.add_argument("--naive-encode-max", type=int, default=None,
                    help="naive: re-encode at most this many tiles per step and scale the time by N / this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--impls", nargs="+", default=["medsec", "naive"])
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one[0], int(args.one[1]))), flush=True)
        return
    rows = []
    base = [a for a in sys.argv[1:]]
    for impl in args.impls:
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, *base, "--one", impl, str(n)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| impl | tiles | k | steps | seconds | CPU seconds | peak MB | note |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = ""
        if r.get("extrapolated"):
            note = f"extrapolated: {r['measured_steps']} of {r['steps']} steps run ({r['seconds_per_step']} s/step)"
            if r["encoded_per_step"] < r["n_tiles"]:
                note += f", {r['encoded_per_step']} of {r['n_tiles']} tiles re-encoded per step, time x N / that"
        print(f"| {r['impl']} | {r['n_tiles']} | {r['k']} | {r['steps']} | {r['seconds']} | {r['cpu_seconds']} | "
              f"{r['peak_mb']} | {note} |")


if __name__ == "__main__":
    main()
