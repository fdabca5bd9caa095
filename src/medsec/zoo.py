"""The model zoo: every recipe whose checkpoint ships with medsec (``medsec ls recipes``), and
the command that retrains them all and rewrites the manifest (``make checkpoints``)::

    python -m medsec.zoo                         # every recipe (a few minutes on a laptop)
    python -m medsec.zoo --only bloodmnist_cnn   # one recipe

The recipes are listed in :data:`medsec.registry.RECIPES`; the lookup of a shipped file, its
manifest and training records are :mod:`medsec.recipes.shipped`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsec.errors import MedsecError
from medsec.recipes.shipped import SHIPPED_DIR, shipped_disabled, write_manifest
from medsec.registry import RECIPES

log = logging.getLogger(__name__)


def _slot(filename: str) -> str:
    """A checkpoint's file name with its recipe hash blanked out (``bloodmnist-*.safetensors``)."""
    return re.sub(r"-[0-9a-f]{12}(?=[-.])", "-*", filename, count=1)


def regenerate(data_root: str | Path | None = None, folder: str | Path = SHIPPED_DIR,
               only: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the shipped recipes (all, or the names in ``only``) from scratch, ignoring the
    shipped and cached files, put the results in ``folder`` (replacing every checkpoint there
    when all are retrained) and rewrite the manifest."""
    from medsec.data.paths import data_root as default_root

    top = Path(data_root) if data_root is not None else default_root()
    names = RECIPES.list() if not only else list(only)
    makers = {name: RECIPES.get(name) for name in names}  # an unknown name: one RegistryError with suggestions
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medsec-regenerate-") as tmp, shipped_disabled():
        for name in names:
            log.warning("training recipe %s", name)
            makers[name](top, Path(tmp))
        made = sorted(Path(tmp).glob("*.safetensors"))  # recipe outputs, not the run folders beside them
        if not only:
            for old in out.glob("*.safetensors"):
                old.unlink()
        else:  # replace the earlier files of these recipes (the same name but for the recipe hash)
            slots = {_slot(f.name) for f in made}
            for old in out.glob("*.safetensors"):
                if _slot(old.name) in slots:
                    old.unlink()
        for new in made:
            shutil.copyfile(new, out / new.name)
    return write_manifest(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsec.zoo",
                                     description="Retrain every shipped recipe checkpoint and rewrite the manifest.")
    parser.add_argument("--data-root", help="the data folder (default $MEDSEC_DATA, else ../shared/data)")
    parser.add_argument("--out", default=str(SHIPPED_DIR), help="where the checkpoints go (default: the package)")
    parser.add_argument("--only", nargs="+", metavar="RECIPE", help="retrain only these recipes (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        files = regenerate(args.data_root, args.out, args.only)
    except MedsecError as exc:  # one line naming the problem and the fix, as the CLI does
        print(f"python -m medsec.zoo: error: {exc}", file=sys.stderr)
        return 2
    for name, entry in files.items():
        print(f"{name:<48} {entry['bytes'] / 1e6:6.2f} MB  {json.dumps(entry['metrics'])}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
