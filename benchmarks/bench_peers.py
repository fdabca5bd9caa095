"""medsec against torchattacks, ART and Foolbox: time and robust accuracy, one process.

On one trained model and one batch, every library runs the same attack at matched settings;
the table gives, per attack and library, the wall time of one call, the process CPU time,
the time to a robust-accuracy verdict (a peer's call plus the one forward it needs to
tell which points are still robust; medsec's result already carries that), the time in units of one forward+backward pass of the batch w.r.t. the input (the floor of
a T-step gradient attack is T units; of a Q-query score-based attack Q forward passes),
and the robust accuracy on the batch (minimum-norm attacks: after projecting onto the
stated L2 ball, plus the median L2 of the successful points). Peers are called as their
documentation shows (model in eval mode, parameters left trainable: that is how a user
runs them); medsec freezes the parameters during the call itself.

Attacks (BloodMNIST small_cnn, 28x28 RGB, 8 classes):

* PGD-10 and PGD-50, L-inf eps 2/255, step 2.5 eps / T, no random start (all four libs);
* C&W-L2, ``--cw-search`` binary-search steps x ``--cw-steps`` Adam steps (default 5 x 100), lr 0.01,
  c0 = 0.01 (medsec, ART, Foolbox; torchattacks has no binary search: its CW runs c = 1 for
  ``--cw-steps`` steps), robust at L2 0.5;
* DeepFool-L2, 50 steps, overshoot 0.02, all 8 classes (all four), robust at L2 0.5;
* APGD-CE, L-inf 2/255, 50 steps, one run (medsec, torchattacks, ART; Foolbox has none);
* Square, L-inf 4/255, 300 queries, p_init 0.8, margin loss (medsec, torchattacks, ART);
* evaluation mode: medsec PGD-50 at 8/255 with ``early_stop`` on and off, torchattacks PGD-50.

The model is the one the test suite trains (``medsec.recipes.builtin``, cached under
``.medsec-cache/``; trained here when absent, ~6 min on 2 cores). Images: the first
``--batch`` BloodMNIST test images.

Example:
    python benchmarks/bench_peers.py --batch 128 --threads 2 --json benchmarks/peers.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import medsec
from medsec.recipes.builtin import bloodmnist_classifier

ROOT = Path(__file__).resolve().parent.parent
Runner = Callable[[], torch.Tensor]
SQUARE_QUERIES = 300


@dataclass
class Bench:
    """One attack at matched settings: a runner per library and how to score it."""

    name: str
    runners: dict[str, Runner]
    floor_units: float | None  # least cost in fwd+bwd units (None: not defined)
    l2_eval: float | None = None  # minimum-norm attack: robust accuracy after projection onto this L2 ball
    repeats: int = 1
    notes: str = ""
    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (x + delta * (eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)).clamp(0, 1)


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One forward+backward pass w.r.t. the input (parameters frozen): the cost unit."""
    xa = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xa), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xa)
    return g


def timed(fn: Runner, repeats: int) -> tuple[torch.Tensor, list[float], list[float]]:
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert out is not None
    return out.detach().cpu(), walls, cpus


def build(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, only: set[str] | None,
          cw_search: int = 5, cw_steps: int = 100) -> list[Bench]:
    import foolbox as fb
    import torchattacks
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        CarliniL2Method,
        DeepFool,
        ProjectedGradientDescentPyTorch,
        SquareAttack,
    )
    from art.estimators.classification import PyTorchClassifier

    n = len(x)
    xn, yn = x.numpy(), y.numpy()
    art_clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=8, clip_values=(0.0, 1.0), device_type="cpu")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))

    def art(attack: object) -> Runner:
        return lambda: torch.from_numpy(attack.generate(xn, y=yn))  # type: ignore[attr-defined]

    def fool(attack: object, eps: float | None) -> Runner:
        def run() -> torch.Tensor:
            raw, clipped, _ = attack(fmodel, x, y, epsilons=eps)  # type: ignore[operator]
            return clipped if eps is not None else raw

        return run

    def ta(attack: torchattacks.Attack) -> Runner:
        return lambda: attack(x, y)

    def ms(attack: medsec.attacks.Attack, threat: medsec.ThreatModel) -> Runner:
        return lambda: attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).x_adv

    benches = []
    eps = 2 / 255
    for steps in (10, 50):
        alpha = 2.5 * eps / steps
        benches.append(Bench(f"PGD-{steps}", {
            "medsec": ms(medsec.attacks.create("pgd", steps=steps, step_size=alpha, random_start=False),
                         medsec.ThreatModel("linf", eps)),
            "torchattacks": ta(torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)),
            "ART": art(ProjectedGradientDescentPyTorch(art_clf, eps=eps, eps_step=alpha, max_iter=steps,
                                                       num_random_init=0, batch_size=n, verbose=False)),
            "Foolbox": fool(fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=False), eps),
        }, floor_units=steps, repeats=3 if steps == 10 else 2))
    bs, st = cw_search, cw_steps
    benches.append(Bench("C&W-L2", {
        "medsec": ms(medsec.attacks.create("cw", binary_search_steps=bs, steps=st, lr=0.01, initial_const=0.01),
                     medsec.ThreatModel("l2", 100.0)),
        "torchattacks": ta(torchattacks.CW(model, c=1.0, kappa=0, steps=st, lr=0.01)),
        "ART": art(CarliniL2Method(art_clf, binary_search_steps=bs, max_iter=st, learning_rate=0.01,
                                   initial_const=0.01, batch_size=n, verbose=False)),
        "Foolbox": fool(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=bs, steps=st, stepsize=0.01,
                                                         initial_const=0.01), None),
    }, floor_units=bs * st, l2_eval=0.5, notes="torchattacks: fixed c = 1, no binary search"))
    benches.append(Bench("DeepFool-L2", {
        "medsec": ms(medsec.attacks.create("deepfool", steps=50, overshoot=0.02, num_classes=8),
                     medsec.ThreatModel("l2", 100.0)),
        "torchattacks": ta(torchattacks.DeepFool(model, steps=50, overshoot=0.02)),
        "ART": art(DeepFool(art_clf, max_iter=50, epsilon=0.02, nb_grads=8, batch_size=n, verbose=False)),
        "Foolbox": fool(fb.attacks.L2DeepFoolAttack(steps=50, candidates=8, overshoot=0.02), None),
    }, floor_units=None, l2_eval=0.5, notes="floor undefined (per-step class gradients); time in fwd+bwd units"))
    benches.append(Bench("APGD-CE", {
        "medsec": ms(medsec.attacks.create("apgd", steps=50, restarts=1, loss="ce"), medsec.ThreatModel("linf", eps)),
        "torchattacks": ta(torchattacks.APGD(model, norm="Linf", eps=eps, steps=50, n_restarts=1, loss="ce",
                                                   seed=0)),
        "ART": art(AutoProjectedGradientDescent(art_clf, eps=eps, eps_step=2 * eps, max_iter=50, nb_random_init=1,
                                                batch_size=n, loss_type="cross_entropy", verbose=False)),
    }, floor_units=50, repeats=2))
    q, seps = SQUARE_QUERIES, 4 / 255
    benches.append(Bench("Square-Linf", {
        "medsec": ms(medsec.attacks.create("square", queries=q, p_init=0.8), medsec.ThreatModel("linf", seps)),
        "torchattacks": ta(torchattacks.Square(model, norm="Linf", eps=seps, n_queries=q, p_init=0.8, seed=0)),
        "ART": art(SquareAttack(art_clf, norm=np.inf, eps=seps, max_iter=q, p_init=0.8, nb_restarts=1, batch_size=n,
                                verbose=False)),
    }, floor_units=None, notes=f"floor = {q} no-grad forwards, in the 'floor' column as fwd units"))
    e8 = 8 / 255
    benches.append(Bench("PGD-50 eval mode, 8/255", {
        "medsec early_stop": ms(medsec.attacks.create("pgd", steps=50, step_size=2.5 * e8 / 50, random_start=False,
                                                      early_stop=True), medsec.ThreatModel("linf", e8)),
        "medsec": ms(medsec.attacks.create("pgd", steps=50, step_size=2.5 * e8 / 50, random_start=False),
                     medsec.ThreatModel("linf", e8)),
        "torchattacks": ta(torchattacks.PGD(model, eps=e8, alpha=2.5 * e8 / 50, steps=50, random_start=False)),
    }, floor_units=50, repeats=2))
    return [b for b in benches if only is None or b.name in only]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="bench names to run (default: all)")
    ap.add_argument("--json", default=None, help="write the numbers here (rewritten after every bench)")
    ap.add_argument("--cw-search", type=int, default=5, help="C&W binary-search steps")
    ap.add_argument("--cw-steps", type=int, default=100, help="C&W Adam steps per binary-search step")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("art").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(os.environ.get("MEDSEC_DATA", ROOT.parent / "shared" / "data")) / "bloodmnist"
    model = bloodmnist_classifier(data, ROOT / ".medsec-cache").eval()
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(data))
    x, y = test.images[: args.batch].clone(), test.labels[: args.batch].clone()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    flags = [p.requires_grad for p in model.parameters()]

    def unit() -> torch.Tensor:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return fwd_bwd(model, x, y)
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)

    def fwd() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    timed(unit, 2)
    u_wall = statistics.median(timed(unit, 7)[1])
    f_wall = statistics.median(timed(fwd, 7)[1])
    load0 = os.getloadavg()
    print(f"model small_cnn (BloodMNIST recipe), batch {len(x)} (BloodMNIST test[:{len(x)}]), clean accuracy {clean:.3f}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"1 fwd+bwd = {u_wall * 1e3:.1f} ms, 1 forward = {f_wall * 1e3:.1f} ms, load average {load0[0]:.2f}")
    benches = build(model, x, y, set(args.only) if args.only else None, args.cw_search, args.cw_steps)
    record: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
                                 "torch": torch.__version__, "clean_accuracy": clean, "unit_fwd_bwd_s": u_wall,
                                 "forward_s": f_wall, "load_before": load0, "benches": {}}
    for b in benches:
        # the cost unit is re-measured before every bench, so slow drifts of the machine's
        # load hit the unit and the attacks alike; libraries take turns inside each round
        u_wall = statistics.median(timed(unit, 3)[1])
        f_wall = statistics.median(timed(fwd, 3)[1])
        print(f"\n== {b.name}" + (f" ({b.notes})" if b.notes else "")
              + f"  [1 fwd+bwd {u_wall * 1e3:.0f} ms, 1 fwd {f_wall * 1e3:.0f} ms, load {os.getloadavg()[0]:.2f}]")
        print(f"{'library':<20}{'wall s':>9}{'verdict s':>10}{'cpu s':>9}{'units':>9}{'/floor':>8}{'robust':>8}{'medL2':>8}")
        walls: dict[str, list[float]] = {lib: [] for lib in b.runners}
        cpus: dict[str, list[float]] = {lib: [] for lib in b.runners}
        outs: dict[str, torch.Tensor] = {}
        for _ in range(b.repeats):
            for lib, fn in b.runners.items():
                model.zero_grad(set_to_none=True)
                out, w, c = timed(fn, 1)
                walls[lib] += w
                cpus[lib] += c
                outs[lib] = out
        if b.name.startswith("Square"):
            floor_s: float | None = SQUARE_QUERIES * f_wall
        else:
            floor_s = b.floor_units * u_wall if b.floor_units else None
        for lib, out in outs.items():
            wall, cpu = min(walls[lib]), min(cpus[lib])
            xa = project_l2(out, x, b.l2_eval) if b.l2_eval is not None else out
            with torch.no_grad():
                pred = model(xa).argmax(1)
                pred_raw = model(out).argmax(1)
            robust = (pred == y).float().mean().item()
            fooled = pred_raw != y
            l2 = (out - x).flatten(1).norm(dim=1)
            med_l2 = float(l2[fooled].median()) if b.l2_eval is not None and fooled.any() else None
            # time to a robust-accuracy verdict: medsec's result carries success and logits at
            # x_adv (its last forward is inside the call); a peer returns x_adv only and needs
            # one more forward of the batch to say which points are still robust
            verdict = wall if lib.startswith("medsec") else wall + f_wall
            row = {"wall_s": wall, "verdict_s": verdict, "cpu_s": cpu, "walls": walls[lib], "cpus": cpus[lib], "units": wall / u_wall,
                   "over_floor": wall / floor_s if floor_s else None, "robust_accuracy": robust,
                   "median_l2_fooled": med_l2}
            b.rows[lib] = row
            print(f"{lib:<20}{wall:>9.3f}{verdict:>10.3f}{cpu:>9.3f}{wall / u_wall:>9.1f}"
                  f"{(f'{wall / floor_s:.2f}' if floor_s else '-'):>8}{robust:>8.3f}"
                  f"{(f'{med_l2:.3f}' if med_l2 is not None else '-'):>8}")
        sys.stdout.flush()
        record["benches"][b.name] = {"floor_units": b.floor_units, "l2_eval": b.l2_eval, "notes": b.notes,  # type: ignore[index]
                                     "unit_fwd_bwd_s": u_wall, "forward_s": f_wall, "rows": b.rows}
        if args.json:  # an interrupted run keeps every finished bench
            Path(args.json).write_text(json.dumps(record, indent=2))
    record["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
