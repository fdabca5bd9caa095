"""Every kind gives the same numbers under ``sequential``, ``process:2`` and a real local Ray: a
tiny config of each (``tiny_<kind>.py``, on real data) run three times, every process at one
torch thread."""

from __future__ import annotations

import importlib
import shutil

import pytest
from executor_checks import same_numbers

from medsec.config import validate_config
from medsec.runs import build_executor, run

pytestmark = pytest.mark.effect

KINDS = ["segmentation", "backdoor_defense", "prompt_backdoor", "badmatch", "wsi"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_same_numbers_sequential_process_ray(kind, data_root, local_ray, tmp_path):
    tiny = importlib.import_module(f"tiny_{kind}")
    cfg = validate_config(tiny.config(data_root))
    assert cfg.kind == kind
    seq = run(cfg, tmp_path / "seq", executor=build_executor("sequential"), report=False)
    assert seq["status"] == "complete" and len(seq["cells"]) >= 3
    for spec in ("process:2", "ray:2"):
        out = tmp_path / spec.replace(":", "-")
        if (tmp_path / "seq" / "features").is_dir():  # wsi: the encoded tile pools, a cache the driver checks
            shutil.copytree(tmp_path / "seq" / "features", out / "features",
                            ignore=shutil.ignore_patterns("vulnerability*", "slide-*"))
        res = run(cfg, out, executor=build_executor(spec), report=False)
        assert res["provenance"]["executor"] == spec.split(":")[0]
        same_numbers(seq, res)
