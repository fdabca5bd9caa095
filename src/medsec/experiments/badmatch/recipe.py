"""The BadMatch / BadDist BloodMNIST recipe that the effect tests share.

The recipe is a ``kind: badmatch`` experiment config restricted to one vision tower, one
trigger, one poison rate and BadDist-assisted BadMatch. Its four models (the pre-trained
MedCLIP-style model, the BadDist vision tower, the clean fine-tune and the backdoored
fine-tune) ship with medsec (:mod:`medsec.recipes.shipped`); without them the recipe runs
the experiment into ``cache_dir/badmatch-bloodmnist-<hash>/`` (whose resume logic reuses a
finished run) and saves the four models, each with its training record, in ``cache_dir``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from medsec.errors import DataError
from medsec.recipes.builtin import recipe_key, recipe_threads, seeded_init
from medsec.recipes.shipped import locate, training_record

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
    "eval": {"n_prompts": 5, "n_samplings": 3, "clean_finetune": True, "save_models": True},
}
# the recipe's four models, in the order the experiment trains them
BADMATCH_MODELS = ("pretrained", "baddist", "clean-finetune", "poisoned")


def recipe_config(root: str | Path, recipe: dict[str, Any] | None = None) -> Any:
    """The recipe as a validated ``kind: badmatch`` config reading BloodMNIST from ``root``."""
    from medsec.config.loader import validate_config

    r = copy.deepcopy(BADMATCH_BLOODMNIST_RECIPE if recipe is None else recipe)
    r["data"]["root"] = str(root)
    return validate_config(r)


def badmatch_bloodmnist(root: str | Path, cache_dir: str | Path, recipe: dict[str, Any] | None = None,
                        allow_train: bool = True) -> dict[str, Path]:
    """``{model: checkpoint path}`` of the recipe's four models (:data:`BADMATCH_MODELS`, each
    a :func:`~medsec.models.medclip.save_medclip` file with its training record): shipped,
    cached in ``cache_dir``, or made by running the experiment into ``cache_dir`` (with
    ``allow_train`` False, a missing model is a :class:`~medsec.errors.DataError` instead)."""
    from medsec.models.medclip import load_medclip, save_medclip
    from medsec.runs import run

    if not (Path(root) / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    r = copy.deepcopy(BADMATCH_BLOODMNIST_RECIPE if recipe is None else recipe)
    r["data"]["root"] = None  # where the data lie is not part of the recipe
    key = recipe_key(r)
    data = [Path(root) / "bloodmnist.npz"]
    names = {m: f"badmatch-bloodmnist-{key}-{m}.safetensors" for m in BADMATCH_MODELS}
    paths = {m: locate(n, cache_dir, data) for m, n in names.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    if not allow_train:
        missing = next(p for p in paths.values() if not p.is_file())
        raise DataError(f"{missing} (a BadMatch recipe model, which the driver prepares) is missing on this worker; "
                        "put the cache folder on storage every worker reads")
    cfg = recipe_config(root, r)
    out = Path(cache_dir) / f"badmatch-bloodmnist-{key}"
    with recipe_threads(r):  # the run seeds the global RNGs of each stage itself
        results = run(cfg, out, report=False)
    bb, trig = cfg.backbones[0].label, cfg.triggers[0].label
    (cell,) = results["cells"].values()
    info = results["models"][bb]
    common = {"data": results["data"]}
    sources = {
        "pretrained": (f"{bb}-pretrained", {"metrics": {"clean_accuracy": info["pretrained_eval"]["clean_accuracy"]},
                                            "pretrain": info["pretrain"]}),
        "baddist": (f"{bb}-{trig}-baddist", {"metrics": {}, "baddist": info[f"baddist_{trig}"]}),
        "clean-finetune": (f"{bb}-clean-finetune", {"metrics": _rates(info["clean_finetune"][trig])}),
        "poisoned": (cell["id"], {"metrics": _rates(cell["metrics"]),
                                  "cell": {k: cell[k] for k in ("id", "trigger", "rate", "method", "n_poisoned",
                                                                "poison_indices", "poison")}}),
    }
    for m, (stem, rec) in sources.items():
        model = load_medclip(out / "models" / f"{stem}.safetensors")
        metrics = rec.pop("metrics")
        paths[m] = save_medclip(model, Path(cache_dir) / names[m],
                                extra={**training_record(r, data, metrics=metrics), **common, **rec})
    return paths


def poisoned_set(root: str | Path, target: int, rate: float, recipe: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """The recipe's fine-tune set with BadMatch poisoning of ``rate`` of its images, all-to-one
    towards class ``target``; returns ``(poisoned set, trigger, trigger params)``."""
    import torch

    from medsec.backdoors.badmatch import BadMatch, make_trigger
    from medsec.experiments.badmatch.run import load_data

    cfg = recipe_config(root, recipe)
    train, _, _ = load_data(cfg)
    spec = cfg.triggers[0]
    trig = make_trigger({"name": spec.name, **spec.params}, cfg.data.image_size)
    params = trig.sample_params(train.image_shape, torch.Generator().manual_seed(cfg.seed))
    ft_train = (train.take(cfg.data.finetune_limit, torch.Generator().manual_seed(cfg.seed + 1))
                if cfg.data.finetune_limit else train)
    poisoned = BadMatch(trig, int(target), rate=rate, mode=cfg.poison.mode, seed=cfg.seed).poison(ft_train, params)
    return poisoned, trig, params


def poisoned_finetune(root: str | Path, models: dict[str, Path], poisoned: Any, method: str = "baddist+badmatch",
                      recipe: dict[str, Any] | None = None, threads: int | None = None) -> Any:
    """The recipe's fine-tune on ``poisoned`` (:func:`poisoned_set`) from the pre-trained model
    (``badmatch``) or from it with the BadDist vision tower (``baddist+badmatch``), with the
    experiment's sentences and seeds (backbone 0, the global RNGs seeded as for the cell of
    this rate and method), as the experiment's cell trains it, with ``threads`` intra-op
    threads (default: the recipe's)."""
    import torch

    from medsec.data.medclip_text import sentence_bank
    from medsec.models.medclip import load_medclip
    from medsec.training.medclip import train_medclip

    cfg = recipe_config(root, recipe)
    model = load_medclip(models["pretrained"])
    if method == "baddist+badmatch":
        model.vision = load_medclip(models["baddist"]).vision
    ft = cfg.finetune
    bank = sentence_bank(cfg.data.dataset, pairs=cfg.data.sentence_pairs, seed=cfg.seed,
                         synonyms=cfg.data.sentence_synonyms)
    from medsec.experiments.badmatch.run import cell_id
    from medsec.runs.grid import cell_seed

    cid = cell_id(cfg.backbones[0].label, cfg.triggers[0].label, float(poisoned.record["rate"]), method)
    with recipe_threads({} if threads is None else {"threads": threads}), seeded_init(cell_seed(cfg.seed, cid)):
        train_medclip(model, poisoned.images, poisoned.image_labels, bank, epochs=ft.epochs, lr=ft.lr,
                      batch_size=ft.batch_size, weight_decay=ft.weight_decay, text_batch_size=ft.text_batch_size,
                      label_temperature=ft.label_temperature, generator=torch.Generator().manual_seed(cfg.seed + 100))
    return model.eval()


def _rates(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("clean_accuracy", "attack_success_rate", "backdoor_accuracy") if m.get(k) is not None}


def evaluate_recipe_model(root: str | Path, path: str | Path | Any, triggered: bool = True,
                          recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zero-shot CA (and, when ``triggered``, ASR and BA with the recipe's trigger) of a MedCLIP
    model or checkpoint on the recipe's test images, prompts and seeds, as the experiment measures them."""
    import torch

    from medsec.backdoors.badmatch import make_trigger
    from medsec.data.medclip_text import class_prompts
    from medsec.experiments.badmatch.run import evaluate, load_data, target_index
    from medsec.models.medclip import load_medclip

    cfg = recipe_config(root, recipe)
    train, test, _ = load_data(cfg)
    spec = cfg.triggers[0]
    trig = make_trigger({"name": spec.name, **spec.params}, cfg.data.image_size) if triggered else None
    params = trig.sample_params(train.image_shape, torch.Generator().manual_seed(cfg.seed)) if trig else None
    model = path.eval() if isinstance(path, torch.nn.Module) else load_medclip(path).eval()
    return evaluate(model, class_prompts(cfg.data.dataset), test, target_index(cfg, train.classes), cfg.eval.n_prompts,
                    cfg.eval.n_samplings, cfg.seed, trig, params)


__all__ = ["BADMATCH_BLOODMNIST_RECIPE", "BADMATCH_MODELS", "badmatch_bloodmnist", "evaluate_recipe_model",
           "poisoned_finetune", "poisoned_set", "recipe_config"]


def shipped(top: Path, cache: Path) -> dict[str, Path]:
    """The shipped BadMatch models: :func:`badmatch_bloodmnist` on ``top/bloodmnist``."""
    return badmatch_bloodmnist(top / "bloodmnist", cache)
