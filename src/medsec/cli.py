"""The ``medsec`` command line.

    medsec run CONFIG [--out DIR] [--set key=value ...]
    medsec demo [--out DIR] [--data synthetic|bloodmnist] [--data-root DIR]
    medsec ls {attacks,models,datasets,metrics,objectives,defenses,masks,triggers,detectors,repairs}
    medsec validate CONFIG [--set key=value ...]
    medsec report RESULTS.json
    medsec train CONFIG [--out DIR] [--set key=value ...]

Errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from medsec.errors import MedsecError

log = logging.getLogger("medsec")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from medsec.progress import progress_enabled

    level = logging.INFO if verbose or progress_enabled() else logging.WARNING
    handler: logging.Handler = RichHandler(show_path=False, show_time=False) if sys.stderr.isatty() else logging.StreamHandler()
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


def _console() -> Any:
    from rich.console import Console

    return Console()


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def print_summary(results: dict[str, Any], out_dir: Path) -> None:
    """Print the results table and where the report is."""
    from rich.table import Table

    from medsec.experiments import kind_of_results

    con = _console()
    kind = kind_of_results(results)
    if kind is not None:
        if kind.summary is not None:
            kind.summary(results, out_dir, con)
        else:
            con.print(f"{results.get('name')}: {results.get('status')}; report: {out_dir / 'report.html'}")
        return
    if results.get("task") == "segmentation":
        _print_segmentation(con, results, out_dir)
        return
    clean = results.get("clean", {})
    train = (results.get("model") or {}).get("train")
    if train:
        con.print(f"trained {results['model']['name']}: test accuracy {_pct(train.get('test_accuracy'))} "
                  f"in {train.get('runtime_s', 0):.0f}s")
    con.print(f"clean accuracy {_pct(clean.get('accuracy'))} on {clean.get('n')} images")
    table = Table(title=results.get("name"))
    for col in ("attack", "norm", "eps", "robust acc.", "success", "time"):
        table.add_column(col, justify="left" if col in ("attack", "norm") else "right")
    for ev in results.get("evaluations", []):
        t, m = ev["threat"], ev["metrics"]
        eps = f"{t['eps_255']:.3g}/255" if t["norm"] == "linf" else f"{t['eps']:g}"
        table.add_row(ev["label"] + (" (T)" if t["targeted"] else ""), t["norm"], eps, _pct(m.get("robust_accuracy")),
                      _pct(m.get("attack_success_rate")), f"{ev['runtime_s']:.1f}s")
    con.print(table)
    for chk in results.get("checks", []):
        con.print(f"[yellow]warning[/yellow] {chk['code']}: {chk['message']}", markup=True, highlight=False)
    con.print(f"report: {out_dir / 'report.html'}")


def _print_segmentation(con: Any, results: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    clean = results.get("clean", {})
    train = (results.get("model") or {}).get("train")
    if train:
        con.print(f"trained {results['model']['name']}: test Dice {train['test']['dice']:.3f} in {train.get('runtime_s', 0):.0f}s")
    con.print(f"clean Dice {clean.get('dice', float('nan')):.3f}, IoU {clean.get('iou', float('nan')):.3f} "
              f"on {clean.get('n')} images")
    table = Table(title=results.get("name"))
    for col in ("attack", "mode", "eps", "Dice", "IoU", "Dice drop", "success", "time"):
        table.add_column(col, justify="left" if col in ("attack", "mode") else "right")
    for ev in results.get("evaluations", []):
        t, m = ev["threat"], ev["metrics"]
        eps = f"{t['eps']:g}" if ev.get("mode") == "paper" else f"{t['eps_255']:.3g}/255"
        table.add_row(ev["label"] + (" (T)" if t["targeted"] else ""), ev.get("mode", "pixel"), eps, f"{m['dice']:.3f}",
                      f"{m['iou']:.3f}", f"{m['dice_drop']:.3f}", _pct(m.get("attack_success_rate")),
                      f"{ev['runtime_s']:.1f}s")
    con.print(table)
    for chk in results.get("checks", []):
        con.print(f"[yellow]warning[/yellow] {chk['code']}: {chk['message']}", markup=True, highlight=False)
    con.print(f"report: {out_dir / 'report.html'}")


def cmd_run(args: argparse.Namespace) -> int:
    from medsec.config.loader import load_config
    from medsec.eval.runner import run_experiment

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    results = run_experiment(cfg, out)
    print_summary(results, out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medsec.demo import demo_config
    from medsec.eval.runner import run_experiment

    cfg = demo_config(args.data, args.data_root, args.device)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    results = run_experiment(cfg, out)
    print_summary(results, out)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from medsec.config.loader import load_config
    from medsec.eval.runner import plan_cells

    cfg = load_config(args.config, args.set)
    if getattr(cfg, "kind", "evasion") != "evasion":
        print(f"{args.config}: valid ({cfg.kind} experiment)")
        return 0
    cells = plan_cells(cfg)
    print(f"{args.config}: valid ({len(cfg.attacks)} attacks, {len(cells)} cells)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    import medsec.attacks
    import medsec.backdoors
    import medsec.data
    import medsec.defenses
    import medsec.masks
    import medsec.metrics
    import medsec.metrics.naturalness
    import medsec.models
    import medsec.objectives  # noqa: F401
    from medsec.registries import (
        ATTACKS,
        DATASETS,
        DEFENSES,
        DETECTORS,
        MASKS,
        METRICS,
        MODELS,
        OBJECTIVES,
        REPAIRS,
        TRIGGERS,
    )

    reg = {"attacks": ATTACKS, "models": MODELS, "datasets": DATASETS, "metrics": METRICS, "objectives": OBJECTIVES,
           "defenses": DEFENSES, "masks": MASKS, "triggers": TRIGGERS, "detectors": DETECTORS,
           "repairs": REPAIRS}[args.kind]
    for name in reg.list():
        factory = reg.get(name)
        doc = (factory.__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""
        extra = ""
        if args.kind == "attacks":
            extra = f"  [norms: {', '.join(factory.norms)}]"
        print(f"{name:<20} {first}{extra}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medsec.report import write_report

    paths = write_report(Path(args.results))
    for p in paths.values():
        print(p)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medsec.config.loader import load_config
    from medsec.errors import ConfigError
    from medsec.eval.runner import build_model, load_splits, resolve_device
    from medsec.io import atomic_write_json
    from medsec.models.checkpoint import save_checkpoint
    from medsec.progress import task
    from medsec.training import evaluate, train_classifier

    cfg = load_config(args.config, args.set)
    if cfg.train is None:
        raise ConfigError(f"{args.config} has no train section; add one (epochs, lr, batch_size)")
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    device = resolve_device(cfg.device)
    train_ds, eval_ds, val_ds = load_splits(cfg)
    model = build_model(cfg, train_ds)
    t = cfg.train
    with task("training", t.epochs) as bar:
        res = train_classifier(model, train_ds, val_ds, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                               weight_decay=t.weight_decay, augment=t.augment, seed=cfg.seed, device=device,
                               on_epoch=lambda r: bar.advance())
    acc = evaluate(model, eval_ds, device=device)
    ckpt = save_checkpoint(model, out / "model.safetensors", extra={"config": cfg.name, "test_accuracy": acc})
    atomic_write_json(out / "train.json", {"history": res.history, "test_accuracy": acc, "runtime_s": res.runtime_s})
    print(f"test accuracy {100 * acc:.1f}% ({cfg.data.eval_split}); checkpoint: {ckpt}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsec", description="Security testing of medical-imaging AI.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    p.add_argument("--version", action="version", version=f"medsec {__import__('medsec').__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_set(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.sample_limit=200 (repeatable)")

    sp = sub.add_parser("run", help="run an experiment YAML")
    sp.add_argument("config")
    sp.add_argument("--out", help="output folder (default runs/<name>)")
    with_set(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("demo", help="the offline demo on built-in data")
    sp.add_argument("--out", help="output folder (default runs/demo-...)")
    sp.add_argument("--data", default="synthetic", choices=["synthetic", "bloodmnist"])
    sp.add_argument("--data-root", help="folder holding bloodmnist.npz (default $MEDSEC_DATA/bloodmnist)")
    sp.add_argument("--device", default="cpu")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("ls", help="list registered units")
    sp.add_argument("kind", choices=["attacks", "models", "datasets", "metrics", "objectives", "defenses", "masks",
                                     "triggers", "detectors", "repairs"])
    sp.set_defaults(func=cmd_ls)

    sp = sub.add_parser("validate", help="check a config without running it")
    sp.add_argument("config")
    with_set(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("report", help="re-render report.html/report.md from results.json")
    sp.add_argument("results")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("train", help="train the config's model and save a safetensors checkpoint")
    sp.add_argument("config")
    sp.add_argument("--out", help="output folder (default runs/<name>)")
    with_set(sp)
    sp.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except MedsecError as exc:
        if args.debug:
            raise
        print(f"medsec: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.debug:
            raise
        print(f"medsec: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsec: interrupted; finished cells are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
