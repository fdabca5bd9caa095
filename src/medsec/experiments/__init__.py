"""Experiment kinds: how ``medsec run`` dispatches a config that is not an evasion grid.

An evasion experiment (the default, ``kind: evasion`` or no ``kind``) is validated by
:class:`medsec.config.schema.ExperimentConfig` and run by :func:`medsec.eval.runner.run_experiment`.
Other experiment families (backdoor training, BAPLe prompt learning, whole-slide attacks,
MedCLIP-style poisoning, defence matrices...) have different sections, so each one registers
an :class:`ExperimentKind`:

* ``config``: a strict pydantic model for the whole YAML (it must declare ``kind``,
  ``name``, ``seed`` and ``device`` like the evasion config);
* ``run(cfg, out_dir, report=True) -> results dict``: writes ``results.json`` (with
  ``"task": <kind name>``) atomically, resumes a partial run of the same config, and
  writes the report when ``report`` is true;
* ``summary(results, out_dir, console)``: optional, prints the table ``medsec run`` shows;
* ``render(results, out_dir) -> (html, markdown)``: optional, used by ``medsec report``
  and by :func:`medsec.report.write_report` for results whose ``task`` is this kind.

Register in the module that defines the kind, and list that module in ``_KIND_MODULES``
so the CLI finds it without importing every family at start-up::

    from medsec.experiments import ExperimentKind, register_kind
    register_kind(ExperimentKind("backdoor", BackdoorExperimentConfig, run_backdoor,
                                 summary=print_backdoor, render=render_backdoor))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError
from medsec.registry import suggest

# kind name -> module that registers it (imported on first use)
_KIND_MODULES: dict[str, str] = {
    "backdoor_defense": "medsec.experiments.backdoor_defense",
    "prompt_backdoor": "medsec.experiments.prompt_backdoor",
    "badmatch": "medsec.experiments.badmatch",
    "wsi": "medsec.wsi.experiment",
}

_KINDS: dict[str, ExperimentKind] = {}


@dataclass(frozen=True)
class ExperimentKind:
    """One family of experiments that ``medsec run`` can execute."""

    name: str
    config: type[Any]
    run: Callable[..., dict[str, Any]]
    summary: Callable[[dict[str, Any], Path, Any], None] | None = None
    render: Callable[[dict[str, Any], Path], tuple[str, str]] | None = None
    description: str = ""


def register_kind(kind: ExperimentKind) -> ExperimentKind:
    """Register ``kind`` (re-registering the same name replaces it, for reloads in tests)."""
    if kind.name == "evasion":
        raise ConfigError("'evasion' is the built-in experiment kind and cannot be replaced")
    _KINDS[kind.name] = kind
    return kind


def kind_names() -> list[str]:
    """All experiment kinds, the built-in ``evasion`` first."""
    return ["evasion", *sorted(set(_KIND_MODULES) | set(_KINDS))]


def get_kind(name: str) -> ExperimentKind:
    """The registered kind ``name``; a ConfigError with a suggestion when unknown."""
    if name not in _KINDS and name in _KIND_MODULES:
        importlib.import_module(_KIND_MODULES[name])
    if name not in _KINDS:
        names = kind_names()
        raise ConfigError(f"unknown experiment kind {name!r}.{suggest(name, names)} Known kinds: {', '.join(names)}.")
    return _KINDS[name]


def kind_of_results(results: dict[str, Any]) -> ExperimentKind | None:
    """The kind that wrote ``results`` (None for evasion and segmentation results)."""
    task = results.get("task")
    if not isinstance(task, str) or task in ("evasion", "classification", "segmentation"):
        return None
    try:
        return get_kind(task)
    except ConfigError:
        return None


__all__ = ["ExperimentKind", "register_kind", "get_kind", "kind_names", "kind_of_results"]
