"""PGD-10 wall time: medsec vs torchattacks vs the floor.

On one model and one batch, in one process, times (median of ``--repeats`` after one
warm-up round; the methods take turns inside each round so load changes hit all alike):

* ``medsec``: ``medsec.attacks.create("pgd", steps, step_size, random_start=False)``;
* ``torchattacks``: ``torchattacks.PGD(model, eps, alpha, steps, random_start=False)``;
* ``floor``: ``steps`` bare forward+backward passes w.r.t. the input (model in eval
  mode, parameters with ``requires_grad=False``, ``torch.autograd.grad(loss, x)``) plus
  the elementwise sign step and projection, i.e. the least any PGD can do;
* ``1 forward``: one no-grad forward pass, to put the non-gradient work in units.

It prints a table, the ratios medsec/floor and medsec/torchattacks, and checks that the
three give the same adversarial images (max abs difference < 1e-6). Besides wall time it
records the process CPU time of each call and the load average: on a shared machine
the wall-time minimum and the CPU time are steadier estimates than the wall median.

Images: the first ``--batch`` BloodMNIST test images from
``$MEDSEC_DATA/bloodmnist/bloodmnist.npz`` (default ``../shared/data``) when present, seeded random ones
otherwise. Weights are random (seeded): timing does not depend on them.

Example:
    python benchmarks/bench_pgd.py --batch 256 --steps 10 --repeats 5 --model small_cnn --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks

import medsec
from medsec.data.paths import data_root

DATA = str(data_root() / "bloodmnist" / "bloodmnist.npz")
NUM_CLASSES = 8


def load_batch(batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    if os.path.exists(DATA):
        with np.load(DATA, allow_pickle=False) as d:
            images = d["test_images"][:batch]
            labels = d["test_labels"][:batch, 0]
        x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(labels.astype(np.int64))
        source = f"BloodMNIST test[:{len(x)}]"
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, 28, 28, generator=g)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        source = "random (BloodMNIST not found)"
    return x.to(device), y.to(device), source


def build_model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "small_cnn":
        model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES)
    elif name == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        spec = medsec.InputSpec(channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
        model = medsec.models.Classifier(net, spec, num_classes=NUM_CLASSES)
    else:
        raise SystemExit(f"unknown model {name!r}")
    return model.to(device).eval()


def floor_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """The least work a PGD can do: ``steps`` input-gradient passes and the update."""
    x_adv = x.clone()
    for _ in range(steps):
        xa = x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        x_adv = xa.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return x_adv


def breakdown(run_medsec: Callable[[], torch.Tensor], run_floor: Callable[[], torch.Tensor], repeats: int) -> None:
    """Attribute medsec's process CPU time to the pieces of ``Problem`` (CPU time of the
    same process is far less sensitive to other jobs than wall time)."""
    from medsec.attacks.base import Problem

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    originals = {name: getattr(Problem, name) for name in ("loss_and_grad", "logits")}

    def timed(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*a: object, **k: object) -> object:
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - c0
                calls[name] = calls.get(name, 0) + 1

        return wrapper

    total = floor = 0.0
    try:
        for name, fn in originals.items():
            setattr(Problem, name, timed(name, fn))
        for _ in range(repeats):
            c0 = time.process_time()
            run_medsec()
            total += time.process_time() - c0
            c0 = time.process_time()
            run_floor()
            floor += time.process_time() - c0
    finally:
        for name, fn in originals.items():
            setattr(Problem, name, fn)
    labels = {"loss_and_grad": "Problem.loss_and_grad (fwd+bwd)", "logits": "Problem.logits (no-grad fwd)"}
    print(f"breakdown of medsec CPU time over {repeats} calls (medsec/floor on CPU time = {total / floor:.3f}):")
    for name, label in labels.items():
        print(f"  {label:<34}{spent.get(name, 0.0) / repeats:>9.4f} s {100 * spent.get(name, 0.0) / total:>6.1f} %"
              f"  calls/attack {calls.get(name, 0) // repeats}")
    rest = total - sum(spent.values())
    print(f"  {'checks, projections, bookkeeping':<34}{rest / repeats:>9.4f} s {100 * rest / total:>6.1f} %")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", choices=["small_cnn", "resnet18"], default="small_cnn")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--alpha", type=float, default=2 / 255)
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--breakdown", action="store_true",
                    help="also split medsec's CPU time into its pieces (forward+backward, no-grad forwards, rest)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    x, y, source = load_batch(args.batch, device)
    model = build_model(args.model, device)
    eps, alpha, steps = args.eps, args.alpha, args.steps

    pgd = medsec.attacks.create("pgd", steps=steps, step_size=alpha, random_start=False)
    threat = medsec.ThreatModel("linf", eps)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)

    def run_medsec() -> torch.Tensor:
        return pgd(model, x, y, threat=threat).x_adv

    def run_ta() -> torch.Tensor:
        return ta(x, y)

    def run_floor() -> torch.Tensor:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return floor_pgd(model, x, y, eps, alpha, steps)
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)

    def run_forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    methods: dict[str, Callable[[], torch.Tensor]] = {
        "medsec": run_medsec,
        "torchattacks": run_ta,
        "floor": run_floor,
        "1 forward": run_forward,
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    load_before = os.getloadavg()
    outputs: dict[str, torch.Tensor] = {}
    for rnd in range(args.repeats + 1):  # round 0 is the warm-up
        for name, fn in methods.items():
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            sync()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rnd == 0:
                outputs[name] = out.detach()
            else:
                times[name].append(dt)
                cpu[name].append(dc)
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}

    diff_ta = (outputs["medsec"] - outputs["torchattacks"]).abs().max().item()
    diff_floor = (outputs["medsec"] - outputs["floor"]).abs().max().item()
    same = diff_ta < 1e-6 and diff_floor < 1e-6

    r_floor = med["medsec"] / med["floor"]
    r_ta = med["medsec"] / med["torchattacks"]
    print(f"PGD-{steps} linf eps={eps:.5g} alpha={alpha:.5g} random_start=False | model={args.model} "
          f"batch={len(x)} ({source}) device={device} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} python={platform.python_version()}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (cores: {os.cpu_count()})")
    print(f"{'method':<14}{'wall med s':>11}{'wall min s':>11}{'wall max s':>11}{'cpu med s':>11}"
          f"{'med/floor':>10}{'min/floor':>10}{'cpu/floor':>10}")
    for name in methods:
        print(f"{name:<14}{med[name]:>11.4f}{mins[name]:>11.4f}{max(times[name]):>11.4f}{cpu_med[name]:>11.4f}"
              f"{med[name] / med['floor']:>10.3f}{mins[name] / mins['floor']:>10.3f}{cpu_med[name] / cpu_med['floor']:>10.3f}")
    ratios = {
        "wall median": (r_floor, r_ta),
        "wall min": (mins["medsec"] / mins["floor"], mins["medsec"] / mins["torchattacks"]),
        "cpu median": (cpu_med["medsec"] / cpu_med["floor"], cpu_med["medsec"] / cpu_med["torchattacks"]),
    }
    for label, (rf, rt) in ratios.items():
        print(f"[{label:<11}] medsec/floor = {rf:.3f} (target <= 1.05: {'met' if rf <= 1.05 else 'MISSED'}), "
              f"medsec/torchattacks = {rt:.3f} (target <= 1.00: {'met' if rt <= 1.0 else 'MISSED'})")
    print(f"same adversarial images: {'yes' if same else 'NO'} "
          f"(max |medsec-torchattacks| = {diff_ta:.2g}, max |medsec-floor| = {diff_floor:.2g})")

    if args.breakdown:
        breakdown(run_medsec, run_floor, args.repeats)

    if args.json:
        record = {
            "args": vars(args), "source": source, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "times": times, "cpu_times": cpu, "median": med, "min": mins, "cpu_median": cpu_med,
            "load_before": load_before, "load_after": load_after,
            "ratios": {k: {"medsec_over_floor": a, "medsec_over_torchattacks": b} for k, (a, b) in ratios.items()},
            "max_diff_torchattacks": diff_ta, "max_diff_floor": diff_floor,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
