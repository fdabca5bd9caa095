"""The ``medsec`` command line.

    medsec run CONFIG [--out DIR] [--set key=value ...] [--restart] [--executor process:2] [--shard I/N]
    medsec merge DIR_1 ... DIR_n --out DIR
    medsec demo [--out DIR] [--data synthetic|bloodmnist] [--data-root DIR]
    medsec ls {attacks,models,datasets,metrics,objectives,defenses,masks,triggers,detectors,repairs,
               encoders,mil_heads,kinds,executors}
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
from medsec.version import __version__

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


def print_summary(results: dict[str, Any], out_dir: Path) -> None:
    """Print the kind's summary of a finished run, its warnings and where the report is."""
    from medsec.registry import KINDS

    con = _console()
    kind: Any = KINDS.get(results["kind"])  # a medsec.runs.kind.Kind
    for line in kind.summary(results, out_dir):
        con.print(line, markup=False, highlight=False)
    for chk in results.get("checks", []):
        con.print(f"[yellow]{chk['level']}[/yellow] {chk['code']}: {chk['message']}", markup=True, highlight=False)
    con.print(f"report: {out_dir / 'report.html'}", markup=False, highlight=False)


def _out_dir(args: argparse.Namespace, cfg: Any) -> Path:
    return Path(args.out) if args.out else Path("runs") / cfg.name


def _executor(args: argparse.Namespace, cfg: Any) -> Any:
    """The config's executor, or ``--executor NAME[:WORKERS]`` in its place (the config's
    per-cell resources and retries kept)."""
    from medsec.config.schema import ExecutorConfig, parse_executor
    from medsec.errors import ConfigError
    from medsec.runs import build_executor

    spec = getattr(args, "executor", None)
    if not spec:
        return None
    try:
        given = parse_executor(spec)
    except ValueError as exc:
        raise ConfigError(f"--executor: {exc}") from None
    base = getattr(cfg, "executor", None) or ExecutorConfig()
    keep = base.model_dump(exclude_unset=True, exclude={"name", "workers", "address"})
    return build_executor({**keep, **given})


def _run_and_report(args: argparse.Namespace, cfg: Any) -> int:
    from medsec.runs import Shard, run

    out = _out_dir(args, cfg)
    shard = Shard.parse(args.shard) if getattr(args, "shard", None) else None
    results = run(cfg, out, restart=args.restart, executor=_executor(args, cfg), shard=shard)
    print_summary(results, out)
    return closing_status(results)


def closing_status(results: dict[str, Any]) -> int:
    """The end of ``run``/``merge``: say what is missing, and exit 1 when cells failed."""
    failed = results.get("failed") or {}
    shard = results.get("shard")
    if failed:
        print(f"medsec: {len(failed)} cells failed after their retries ({', '.join(list(failed)[:5])}); the errors are "
              "in results.json under failed; rerun the same command to try them again", file=sys.stderr)
        return 1
    if shard:
        print(f"shard {shard['index']}/{shard['count']}: {len(results['cells'])} of {len(results['seeds']['cells'])} "
              "cells; join the shards with medsec merge DIR_1 ... DIR_n --out DIR")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from medsec.config.loader import load_config

    return _run_and_report(args, load_config(args.config, args.set))


def cmd_demo(args: argparse.Namespace) -> int:
    from medsec.demo import demo_config

    return _run_and_report(args, demo_config(args.data, args.data_root, args.device))


def cmd_merge(args: argparse.Namespace) -> int:
    from medsec.runs.merge import merge

    out = Path(args.out)
    results = merge(args.shards, out)
    print_summary(results, out)
    return closing_status(results)


def cmd_validate(args: argparse.Namespace) -> int:
    from medsec.config.loader import load_config
    from medsec.registry import KINDS

    cfg = load_config(args.config, args.set)
    kind: Any = KINDS.get(cfg.kind)  # a medsec.runs.kind.Kind
    from medsec.runs import build_executor

    cells = kind.plan(cfg)
    executor = build_executor(getattr(cfg, "executor", "sequential"))
    print(f"{args.config}: valid ({cfg.kind} experiment, {len(cells)} cells, executor {executor.name})")
    return 0


LISTS = {"attacks": "ATTACKS", "models": "MODELS", "datasets": "DATASETS", "metrics": "METRICS",
         "objectives": "OBJECTIVES", "defenses": "DEFENSES", "masks": "MASKS", "triggers": "TRIGGERS",
         "detectors": "DETECTORS", "repairs": "REPAIRS", "encoders": "ENCODERS", "mil_heads": "MIL_HEADS",
         "kinds": "KINDS", "executors": "EXECUTORS", "recipes": "RECIPES"}

def cmd_ls(args: argparse.Namespace) -> int:
    import medsec.registry

    reg = getattr(medsec.registry, LISTS[args.kind])
    for name in reg.list():
        entry = reg.get(name)
        if args.kind == "kinds":
            first = entry.description
        else:
            doc = (entry.__doc__ or "").strip().splitlines()
            first = doc[0] if doc else ""
        extra = f"  [norms: {', '.join(entry.norms)}]" if args.kind == "attacks" else ""
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
    from medsec.experiments.evasion.run import build_classifier
    from medsec.io import atomic_write_json
    from medsec.models.checkpoint import save_checkpoint
    from medsec.progress import task
    from medsec.runs.components import load_splits
    from medsec.runs.context import resolve_device
    from medsec.training import evaluate, train_classifier

    cfg = load_config(args.config, args.set)
    if cfg.kind != "evasion" or cfg.train is None:
        raise ConfigError(f"{args.config} has no train section of a classifier; `medsec train` trains the model of a "
                          "kind: evasion config with a train section (epochs, lr, batch_size)")
    out = _out_dir(args, cfg)
    device = resolve_device(cfg.device)
    train_ds, eval_ds, val_ds = load_splits(cfg.data, cfg.seed)
    model = build_classifier(cfg, train_ds)
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
    p.add_argument("--version", action="version", version=f"medsec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_set(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.sample_limit=200 (repeatable)")

    def with_restart(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--restart", action="store_true",
                        help="start over in a folder that holds a run of another config (default: resume the same config)")

    def with_executor(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--executor", metavar="NAME[:WORKERS]",
                        help="where the cells run, in place of the config's executor: sequential, process:2, ray "
                             "(medsec ls executors; docs/scale.md)")

    sp = sub.add_parser("run", help="run an experiment YAML")
    sp.add_argument("config")
    sp.add_argument("--out", help="output folder (default runs/<name>)")
    with_set(sp)
    with_restart(sp)
    with_executor(sp)
    sp.add_argument("--shard", metavar="I/N",
                    help="run only the I-th of N deterministic parts of the cells (0 <= I < N), e.g. one per array "
                         "job; join the parts with medsec merge")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("merge", help="join the run folders of medsec run --shard into one run with one report")
    sp.add_argument("shards", nargs="+", metavar="DIR", help="the shard run folders")
    sp.add_argument("--out", required=True, help="the merged run folder (new or empty)")
    sp.set_defaults(func=cmd_merge)

    sp = sub.add_parser("demo", help="the offline demo on built-in data")
    sp.add_argument("--out", help="output folder (default runs/demo-...)")
    sp.add_argument("--data", default="synthetic", choices=["synthetic", "bloodmnist"])
    sp.add_argument("--data-root", help="folder holding bloodmnist.npz (default $MEDSEC_DATA/bloodmnist)")
    sp.add_argument("--device", default="cpu")
    with_restart(sp)
    with_executor(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("ls", help="list registered units")
    sp.add_argument("kind", choices=list(LISTS))
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
