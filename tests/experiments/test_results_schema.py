"""Every kind's ``results.json`` follows its JSON Schema (``docs/schemas/<kind>.schema.json``,
generated from the kind's results model, :mod:`medsec.runs.schema`): a tiny config of every
kind is run and its results validated with ``jsonschema``; the committed schema files are the
ones the models generate today."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from medsec.config.loader import validate_config
from medsec.registry import KINDS
from medsec.runs import run
from medsec.runs.schema import json_schema

pytestmark = pytest.mark.effect

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"


def tiny(kind: str, data: Path) -> dict[str, Any]:
    """The smallest config of each kind that still runs every stage once."""
    blood = str(data / "bloodmnist")
    return {
        "evasion": {"name": "tiny", "data": {"name": "synthetic_he", "params": {"n": 120, "size": 16}},
                    "model": {"name": "small_cnn", "params": {"width": 8}}, "train": {"epochs": 1},
                    "threat": {"eps": ["8/255"]}, "attacks": [{"name": "fgsm"}],
                    "defenses": [{"name": "bit_depth", "params": {"bits": 4}}],
                    "eval": {"sample_limit": 16, "examples": 2}},
        "segmentation": {"kind": "segmentation", "name": "tiny",
                         "data": {"name": "kvasir_seg", "params": {"size": 32, "limit": 24}},
                         "model": {"name": "monai_unet", "params": {"channels": [4, 8], "strides": [2]}},
                         "train": {"epochs": 1}, "threat": {"eps": ["8/255"]}, "attacks": [{"name": "fgsm"}],
                         "eval": {"sample_limit": 4}, "segmentation": {"overlays": 1}},
        "backdoor_defense": {"kind": "backdoor_defense", "name": "tiny",
                             "data": {"name": "medmnist", "params": {"flag": "bloodmnist", "root": blood}},
                             "model": {"name": "small_cnn", "params": {"width": 8}}, "train": {"epochs": 1, "limit": 300},
                             "backdoors": [{"name": "badnets", "target": 0, "rate": 0.1}],
                             "detectors": [{"name": "spectral"}],
                             "eval": {"test_limit": 64, "clean_size": 32, "detector_queries": 16}},
        "prompt_backdoor": {"kind": "prompt_backdoor", "name": "tiny", "methods": ["baple"], "targets": [1],
                            "data": {"root": blood, "test_size": 16}, "model": {"cache_dir": str(CACHE)},
                            "baple": {"shots": 2, "epochs": 2, "rate": 0.2}},
        "badmatch": {"kind": "badmatch", "name": "tiny",
                     "data": {"dataset": "bloodmnist", "root": blood, "train_limit": 64, "test_limit": 24,
                              "shadow_limit": 16, "sentence_pairs": 4},
                     "pretrain": {"epochs": 1, "batch_size": 32}, "finetune": {"epochs": 1, "batch_size": 32},
                     "baddist": {"epochs": 1, "batch_size": 16},
                     "triggers": [{"label": "square", "name": "badnets", "params": {"size_fraction": 0.15}}],
                     "poison": {"rates": [0.1]}, "methods": ["badmatch"], "eval": {"n_prompts": 1, "n_samplings": 1}},
        "wsi": {"kind": "wsi", "name": "tiny", "cache_dir": str(CACHE), "encoder": {"name": "medsec_bloodmnist"},
                "bags": {"root": blood, "tasks": [{"name": "platelet", "positive": [7]}], "n_train": 6, "n_test": 4,
                         "size_min": 100, "size_max": 120, "key_min": 1, "key_max": 1},
                "heads": [{"name": "abmil"}], "train": {"epochs": 1},
                "attack": {"names": ["pgd"], "rhos": [0.01], "strategies": ["random"], "params": {"pgd": {"steps": 1}}},
                "defenses": {"enabled": False}},
    }[kind]


def test_committed_schemas_are_the_generated_ones() -> None:
    names = KINDS.list()
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(f"{n}.schema.json" for n in names)
    for name in names:
        on_disk = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert on_disk == json_schema(KINDS.get(name).results), (
            f"docs/schemas/{name}.schema.json is stale: run python -m medsec.runs.schema docs/schemas")


@pytest.mark.parametrize("kind", ["evasion", "segmentation", "backdoor_defense", "prompt_backdoor", "badmatch", "wsi"])
def test_every_kind_writes_results_that_follow_its_schema(kind: str, data_root: Path, tmp_path: Path) -> None:
    cfg = validate_config(tiny(kind, data_root))
    results = run(cfg, tmp_path, report=True)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.validate(on_disk, schema)
    assert on_disk["kind"] == kind and on_disk["status"] == "complete" and on_disk["cells"]
    assert set(on_disk["seeds"]["cells"]) >= set(on_disk["cells"])
    assert results["cells"].keys() == on_disk["cells"].keys()
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()
    broken = {**on_disk, "cells": {k: {**v, "id": 3} if "id" in v else {} for k, v in on_disk["cells"].items()}}
    with pytest.raises(jsonschema.ValidationError):  # the schema is not vacuous
        jsonschema.validate({**broken, "status": "done"}, schema)
