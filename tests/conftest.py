"""Shared fixtures and the rules every test runs under.

* **Models**: the fixtures load the checkpoints that medsec's recipes trained and that ship
  with the package (:mod:`medsec.recipes.shipped`). No fixture trains: a missing or stale
  shipped checkpoint is an error that names ``make checkpoints``. Only the retraining tests
  (``tests/recipes/test_recipes.py``) train, one recipe per family, to keep the recipes honest.
* **Tiers**: every test carries exactly one tier marker, the closest one winning (a test's
  own marker over its module's ``pytestmark``): ``unit`` (behaviour and invariants, seconds),
  ``contract`` (the registry-generated attack contract), ``crosscheck`` (against torchattacks,
  ART or Foolbox on the same model) and ``effect`` (an effect of a stated size on real data).
  ``--tiers unit,contract`` runs a subset (``make test-fast``).
* **Determinism**: each test starts from RNG states seeded by its own node id, so its outcome
  does not depend on which tests ran before it (the suite runs in a shuffled order under
  pytest-randomly) or on which worker ran it. Torch uses ``MEDSEC_TEST_THREADS`` intra-op
  threads (default: 1 per pytest-xdist worker, else up to 2).
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MEDSEC_PROGRESS", "0")

CACHE = Path(__file__).resolve().parent.parent / ".medsec-cache"
TIERS = ("unit", "contract", "crosscheck", "effect")


def torch_threads_for_tests() -> int:
    """Intra-op threads for this test process."""
    value = os.environ.get("MEDSEC_TEST_THREADS", "").strip()
    if value:
        return max(1, int(value))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return 1
    return max(1, min(2, os.cpu_count() or 1))


torch.set_num_threads(torch_threads_for_tests())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tiers", default="", help=f"comma-separated tiers to run ({', '.join(TIERS)}); default: all")


def pytest_configure(config: pytest.Config) -> None:
    from medsec.recipes.shipped import require_shipped

    require_shipped(True)
    if hasattr(config.option, "randomly_reset_seed"):
        # pytest-randomly shuffles the order; the RNGs are seeded per test by _seeded_rngs, from the
        # test's id alone, not from randomly's per-run seed (which would change numpy's draws each run)
        config.option.randomly_reset_seed = False


def tier_of(item: pytest.Item) -> str:
    """The test's tier: its closest tier marker."""
    for mark in item.iter_markers():
        if mark.name in TIERS:
            return mark.name
    raise pytest.UsageError(f"{item.nodeid} has no tier marker; mark it (or its module) with one of {', '.join(TIERS)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = {t.strip() for t in str(config.getoption("--tiers")).split(",") if t.strip()}
    unknown = wanted - set(TIERS)
    if unknown:
        raise pytest.UsageError(f"unknown tier(s) {sorted(unknown)}; tiers are {', '.join(TIERS)}")
    keep, drop = [], []
    for item in items:
        tier = tier_of(item)
        item.user_properties.append(("tier", tier))
        (keep if not wanted or tier in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _seeded_rngs(request: pytest.FixtureRequest) -> None:
    """Seed torch, numpy and random from the test's node id (order- and worker-independent)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


SESSION_MODELS: list[torch.nn.Module] = []  # the shared models built by the session fixtures below


@pytest.fixture(autouse=True)
def _shared_models_untouched(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A test must leave the session's shared models as it found them: no parameter gradients
    (a peer library's backward pass leaves them unless the test freezes the parameters) and the
    same train/eval mode. Otherwise the next test would see another model; fail the culprit."""
    yield
    for model in SESSION_MODELS:
        dirty = [n for n, p in model.named_parameters() if p.grad is not None]
        if dirty or model.training:
            for p in model.parameters():
                p.grad = None
            model.eval()
            pytest.fail(f"{request.node.nodeid} left the shared {type(model).__name__} "
                        f"{'with gradients on ' + ', '.join(dirty[:3]) if dirty else 'in training mode'}")


def _shared(model: torch.nn.Module) -> torch.nn.Module:
    SESSION_MODELS.append(model)
    return model


@pytest.fixture(scope="session")
def data_root() -> Path:
    from medsec.data import data_root as root

    return root()


@pytest.fixture(scope="session")
def bloodmnist_root(data_root: Path) -> Path:
    path = data_root / "bloodmnist"
    if not (path / "bloodmnist.npz").is_file():
        pytest.skip(f"BloodMNIST not found at {path} (set MEDSEC_DATA to the folder holding bloodmnist/)")
    return path


@pytest.fixture(scope="session")
def bloodmnist_test(bloodmnist_root: Path):
    import medsec.data

    return medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))


@pytest.fixture(scope="session")
def bloodmnist_model(bloodmnist_root: Path, bloodmnist_test):
    """The BloodMNIST small CNN of medsec's recipe (shipped checkpoint)."""
    from medsec.recipes.builtin import bloodmnist_classifier

    return _shared(bloodmnist_classifier(bloodmnist_root, CACHE))


@pytest.fixture(scope="session")
def bloodmnist_badnets(bloodmnist_root: Path):
    """(model, PoisonedDataset): the small CNN of the BadNets BloodMNIST recipe (shipped)."""
    from medsec.recipes.builtin import badnets_bloodmnist

    model, poisoned = badnets_bloodmnist(bloodmnist_root, CACHE)
    return _shared(model), poisoned


@pytest.fixture(scope="session")
def bloodmnist_clip(bloodmnist_root: Path):
    """(ClipModel, metadata): the CLIP-style model pretrained on BloodMNIST class captions (shipped)."""
    from medsec.recipes.builtin import bloodmnist_clip as recipe

    clip, meta = recipe(bloodmnist_root, CACHE)
    return _shared(clip), meta


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"test order shuffled by pytest-randomly: rerun it with -p randomly --randomly-seed={seed}")
