"""Checkpoints that medsec's own recipes trained, shipped in the package.

The effect tests, benchmarks and docs measure small models trained by the recipes in
:mod:`medsec.recipes.builtin`. Training them takes minutes on a laptop (and many more on a
shared CI machine), so the trained files ship in ``medsec/recipes/checkpoints/``: a recipe
function looks there first, then in its cache folder, and trains only when neither holds a
file for its exact recipe.

A shipped file is used only when all of these hold, otherwise the recipe trains (and says why
in the log):

* its name carries the hash of the recipe dict (:func:`~medsec.recipes.builtin.recipe_key`),
  so a changed recipe never loads a stale model;
* ``manifest.json`` lists it with the file's SHA-256, which matches (a truncated file or a Git
  LFS pointer is refused);
* the SHA-256 of the data it was trained on (:func:`data_fingerprint`, stored in the manifest
  and in the file's metadata) matches the data found under ``$MEDSEC_DATA`` now.

Every shipped file records, in its metadata, the recipe, its seed, the data fingerprint, the
metrics the recipe measured and the versions and thread count it was trained with.

Regenerate them all after a recipe change (one command, a few minutes on 2 cores)::

    make checkpoints          # = python -m medsec.zoo (see medsec.zoo)

Example:
    >>> from medsec.recipes.shipped import manifest
    >>> isinstance(manifest(), dict)
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsec.errors import DataError

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = "manifest.json"
# Intra-op threads a recipe trains with (its "threads" key, else this): the float reduction order,
# and so the trained weights, depend on the thread count, not on the cores that run them; fixing
# it makes a retrain bit-identical on any machine with the same CPU instruction set.
RECIPE_THREADS = 2
_MODE = "normal"  # "normal": shipped, else cache, else train; "required": shipped or an error; "disabled"
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


@contextmanager
def shipped_disabled() -> Iterator[None]:
    """Inside this block recipes ignore the shipped checkpoints (they use their cache or train);
    the retraining tests and :func:`regenerate` use it."""
    global _MODE
    before = _MODE
    _MODE = "disabled"
    try:
        yield
    finally:
        _MODE = before


def require_shipped(required: bool = True) -> None:
    """Make a recipe whose shipped checkpoint is missing or stale raise a :class:`DataError`
    (naming the fix) instead of training. The test suite sets it: no test trains a recipe's
    model behind a fixture; only the retraining tests do, inside :func:`shipped_disabled`."""
    global _MODE
    _MODE = "required" if required else "normal"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "SOURCE.md")
    raise DataError(f"recipe data {str(path)!r} does not exist; set MEDSEC_DATA to the folder that holds it")


def data_fingerprint(paths: Sequence[str | Path]) -> str:
    """SHA-256 over the data files a recipe reads (a folder: every file in it but SOURCE.md,
    by relative name and content), cached per file size and modification time."""
    h = hashlib.sha256()
    for top in map(Path, paths):
        for f in _files(top):
            st = f.stat()
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
            if key not in _FINGERPRINTS:
                _FINGERPRINTS[key] = file_sha256(f)
            rel = f.name if f == top else f.relative_to(top).as_posix()
            h.update(f"{top.name}/{rel}\0{_FINGERPRINTS[key]}\n".encode())
    return h.hexdigest()


def manifest(folder: str | Path = SHIPPED_DIR) -> dict[str, Any]:
    """``{file name: entry}`` of the shipped checkpoints (empty when there is no manifest)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return dict(data.get("files", {}))


def shipped(filename: str, data: Sequence[str | Path]) -> Path | None:
    """The shipped checkpoint ``filename`` when it may be used for ``data`` (see the module
    docstring), else None."""
    if _MODE == "disabled":
        return None
    entry = manifest().get(filename)
    path = SHIPPED_DIR / filename
    if entry is None or not path.is_file():
        return None
    if file_sha256(path) != entry.get("sha256"):
        log.warning("shipped checkpoint %s does not match its manifest hash (a partial checkout or an LFS pointer?); "
                    "training the recipe instead", filename)
        return None
    try:
        current = data_fingerprint(data)
    except DataError:
        return None
    if current != entry.get("data_sha256"):
        log.warning("shipped checkpoint %s was trained on other data than %s (SHA-256 differs); training the recipe "
                    "on this data instead", filename, ", ".join(map(str, data)))
        return None
    return path


def locate(filename: str, cache_dir: str | Path, data: Sequence[str | Path]) -> Path:
    """Where a recipe's checkpoint is: the shipped file when usable, else ``cache_dir/filename``
    (which may not exist yet: the recipe then trains and saves there)."""
    found = shipped(filename, data)
    if found is not None:
        return found
    if _MODE == "required":
        raise DataError(f"no usable shipped checkpoint {filename} (the recipe changed, or the data differ from the data "
                        "it was trained on; the log says which): regenerate the shipped checkpoints with "
                        "`make checkpoints` and commit them")
    return Path(cache_dir) / filename


def training_record(recipe: dict[str, Any], data: Sequence[str | Path], **metrics: Any) -> dict[str, Any]:
    """What a recipe stores with the model it trained: the recipe (with its seed), the data
    fingerprint, the measured metrics, and the versions and thread count it ran with."""
    import torch

    from medsec.version import __version__

    return {"recipe": recipe, "seed": recipe.get("seed"), "data_sha256": data_fingerprint(data),
            "data_files": [Path(p).name for p in data], **metrics,
            "trained_with": {"medsec": __version__, "torch": torch.__version__,
                             "python": platform.python_version(), "torch_threads": int(recipe.get("threads", RECIPE_THREADS))}}


def read_record(path: str | Path) -> dict[str, Any]:
    """The training record (the ``extra`` metadata) of a medsec checkpoint of any model family
    and format (:func:`medsec.models.checkpoint.read_metadata`)."""
    from medsec.models.checkpoint import read_metadata

    return dict(read_metadata(path).get("extra") or {})


def write_manifest(folder: str | Path = SHIPPED_DIR) -> dict[str, Any]:
    """(Re)write ``manifest.json`` from the checkpoints in ``folder``."""
    folder = Path(folder)
    files: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        record = read_record(path)
        if "data_sha256" not in record:
            raise DataError(f"{path.name} has no data fingerprint; train it through its recipe")
        files[path.name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size,
                            "data_sha256": record["data_sha256"], "data_files": record.get("data_files"),
                            "metrics": record.get("metrics", {})}
    text = json.dumps({"regenerate": "make checkpoints", "files": files}, indent=2, sort_keys=True) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    return files
