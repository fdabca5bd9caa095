"""The cached BadMatch / BadDist BloodMNIST recipe that the effect tests share.

The recipe is a ``kind: badmatch`` experiment config restricted to one vision tower, one
trigger, one poison rate and BadDist-assisted BadMatch; it runs through the experiment
runner into ``cache_dir/badmatch-bloodmnist-<hash>``, whose resume logic makes a second
call reuse the finished run (models and metrics), as the classifier recipes in
:mod:`medsec.training.recipes` reuse their checkpoints.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from medsec.errors import DataError
from medsec.training.recipes import recipe_key

# tiny-resnet + tiny-bert at 28 px, pre-trained on all 11,959 BloodMNIST training images
# (training sentences with class synonyms, logit scale from e^1.5); BadDist (AdamW 1e-3,
# 10 epochs) on 500 val images; square trigger (1/7 of the input, black, bottom-right);
# fine-tunes (clean and poisoned) on 3,000 of those images for 4 epochs; 1% poison rate =
# 30 images, each seen 4 times.
BADMATCH_BLOODMNIST_RECIPE: dict[str, Any] = {
    "kind": "badmatch", "name": "badmatch-bloodmnist-recipe", "seed": 0, "device": "cpu",
    "data": {"dataset": "bloodmnist", "image_size": 28, "train_limit": None, "finetune_limit": 3000, "test_limit": 500, "shadow_limit": 500,
             "target": "neutrophil", "sentence_pairs": 64, "sentence_synonyms": True},
    "model": {"text": "tiny-bert", "embed_dim": 64, "logit_scale_init": 1.5},
    "backbones": [{"label": "resnet", "vision": "tiny-resnet"}],
    "pretrain": {"epochs": 3, "lr": 2e-3, "batch_size": 64, "text_batch_size": 32, "label_temperature": 0.1},
    "finetune": {"epochs": 4, "lr": 2e-3, "batch_size": 64, "text_batch_size": 32, "label_temperature": 0.1},
    "baddist": {"epochs": 10, "lr": 1e-3, "lambda1": 5.0, "lambda2": 1.0, "batch_size": 64, "optimizer": "adamw"},
    "triggers": [{"label": "square", "name": "badnets", "params": {"size_fraction": 0.142857, "color": 0.0}}],
    "poison": {"rates": [0.01], "mode": "image"},
    "methods": ["baddist+badmatch"],
    "eval": {"n_prompts": 5, "n_samplings": 3, "clean_finetune": True},
}


def badmatch_bloodmnist(root: str | Path, cache_dir: str | Path,
                        recipe: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """(results, run folder) of the recipe, run once into ``cache_dir`` and reused after."""
    from medsec.config.loader import validate_config
    from medsec.experiments.badmatch import run

    if not (Path(root) / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    r = copy.deepcopy(BADMATCH_BLOODMNIST_RECIPE if recipe is None else recipe)
    r["data"]["root"] = None
    out = Path(cache_dir) / f"badmatch-bloodmnist-{recipe_key(r)}"
    r["data"]["root"] = str(root)
    cfg = validate_config(r)
    return run(cfg, out, report=False), out
