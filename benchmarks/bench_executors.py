"""Wall time of a 24-cell BloodMNIST evasion sweep under each executor, and what a worker costs.

The sweep: the shipped BloodMNIST small CNN (recipe ``bloodmnist``, no training), 400 test
images, FGSM, PGD-10, PGD-20 and MI-FGSM-10 at six L-inf budgets (1, 2, 3, 4, 6, 8 /255): 24
cells, one job each. Every process uses one torch thread, so "1 worker" is one core and the
ideal speed-up of 2 workers is 2x on 2 idle cores.

Runs (in this order, each into a fresh folder): ``sequential`` (in the driver), ``process:1``,
``process:2``, ``ray:1``, ``ray:2`` (a local Ray started once, ``ray.init(num_cpus=2)``, its
start-up reported apart). For each: wall time of the cells (``ctx.execute``, driver preparation
excluded), the start-up of the first worker (dispatch to first finished cell, minus that cell's
own time) and the **per-cell overhead** with one worker: the median gap between two finished
cells minus the second cell's own ``runtime_s`` (transport, pickling, the driver's writes).

Example:
    python benchmarks/bench_executors.py --out benchmarks/executors.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def sweep_config(data_root: Path, sample_limit: int) -> dict[str, Any]:
    from medsec.recipes.shipped import SHIPPED_DIR, manifest

    names = [n for n in manifest() if n.startswith("bloodmnist-") and "pgd_at" not in n and "trades" not in n
             and "clip" not in n]
    ckpt = Path(SHIPPED_DIR) / sorted(names)[0]
    return {
        "name": "bench-executors", "seed": 0, "device": "cpu",
        "data": {"name": "medmnist", "params": {"flag": "bloodmnist", "root": str(data_root / "bloodmnist")}},
        "model": {"checkpoint": str(ckpt)},
        "threat": {"norm": "linf", "eps": ["1/255", "2/255", "3/255", "4/255", "6/255", "8/255"]},
        "attacks": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 10}},
                    {"name": "pgd", "label": "pgd20", "params": {"steps": 20}},
                    {"name": "mifgsm", "params": {"steps": 10}}],
        "eval": {"sample_limit": sample_limit, "batch_size": 200, "examples": 0, "model_checks": False},
    }


def timed_run(cfg: Any, out: Path, executor: Any) -> dict[str, Any]:
    """Run and record when each cell reached the driver."""
    from medsec.runs import context, run
    from medsec.runs.store import RunStore

    stamps: list[tuple[float, str]] = []
    put = RunStore.put
    execute = context.RunContext.execute
    span: dict[str, float] = {}

    def timed_put(self: RunStore, cell_id: str, record: dict[str, Any], **kw: Any) -> None:
        stamps.append((time.perf_counter(), cell_id))
        put(self, cell_id, record, **kw)

    def timed_execute(self: Any, *a: Any, **kw: Any) -> None:
        span["start"] = time.perf_counter()
        execute(self, *a, **kw)
        span["end"] = time.perf_counter()

    RunStore.put = timed_put  # type: ignore[method-assign]
    context.RunContext.execute = timed_execute  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        res = run(cfg, out, executor=executor, report=False)
        total = time.perf_counter() - t0
    finally:
        RunStore.put = put  # type: ignore[method-assign]
        context.RunContext.execute = execute  # type: ignore[method-assign]
    own = {c: r["runtime_s"] for c, r in res["cells"].items()}
    gaps = [b - a - own[cb] for (a, _), (b, cb) in zip(stamps, stamps[1:])]
    first = stamps[0][0] - span["start"] - own[stamps[0][1]]
    return {"cells": len(res["cells"]), "wall_s_total": round(total, 2),
            "wall_s_cells": round(span["end"] - span["start"], 2), "first_worker_startup_s": round(first, 2),
            "cell_runtime_s_sum": round(sum(own.values()), 2),
            "gap_minus_cell_median_s": round(statistics.median(gaps), 3) if gaps else None,
            "robust": {c: r["metrics"]["robust_accuracy"] for c, r in res["cells"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("MEDSEC_DATA", "../shared/data"))
    p.add_argument("--sample-limit", type=int, default=400)
    p.add_argument("--only", nargs="*", default=["sequential", "process:1", "process:2", "ray:1", "ray:2"])
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from medsec.config import validate_config
    from medsec.runs import build_executor

    cfg = validate_config(sweep_config(Path(args.data_root), args.sample_limit))
    rows: dict[str, Any] = {}
    ray_start = None
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.only:
            if spec.startswith("ray") and ray_start is None:
                import ray

                t = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                ray_start = round(time.perf_counter() - t, 2)
            ex = build_executor(spec if spec == "sequential" else {**_spec(spec), "num_cpus_per_cell": 1})
            rows[spec] = timed_run(cfg, Path(tmp) / spec.replace(":", "-"), ex)
            print(spec, {k: v for k, v in rows[spec].items() if k != "robust"}, flush=True)
    base = rows.get("sequential")
    same = all(r["robust"] == base["robust"] for r in rows.values()) if base else None
    for r in rows.values():
        r.pop("robust")
    for n in ("process", "ray"):
        one, two = rows.get(f"{n}:1"), rows.get(f"{n}:2")
        if one and two:
            two["speedup_vs_1_worker"] = round(one["wall_s_cells"] / two["wall_s_cells"], 2)
    report = {"command": "python benchmarks/bench_executors.py " + " ".join(sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "load_before": os.getloadavg()}, "ray_init_s": ray_start,
              "same_numbers_as_sequential": same, "runs": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _spec(text: str) -> dict[str, Any]:
    from medsec.config.schema import parse_executor

    return parse_executor(text)


if __name__ == "__main__":
    main()
