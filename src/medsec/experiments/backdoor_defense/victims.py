"""Backdoored CLIP-style victims for the ``backdoor_defense`` kind: BAPLe and BadMatch.

Each builder returns ``(model, poisoned, info)`` in the shape the kind's detector and
metric code expects from a backdoored image classifier:

* ``model``: a :class:`~medsec.defenses.clip_classifier.TextHeadClassifier`, the attacked
  CLIP-style model as a classifier (image encoder + class text features), so STRIP and
  Neural Cleanse see its class logits and Spectral Signatures / Activation Clustering read
  the image encoder's (normalised) embedding, the input of its text head;
* ``poisoned``: a :class:`VictimData` with the training set the attacked model was adapted
  on (``dataset.images`` / ``dataset.labels``, the poisoned samples as the model saw them),
  the recorded ``poison_indices``, ``triggered(x)`` and ``test_targets(y)``;
* ``info``: what results.json records about the attack.

The attacks are run through their own public APIs (BAPLe: :class:`~medsec.backdoors.
prompt_harness.Harness` on the medsec-pretrained BloodMNIST CLIP of
:func:`medsec.recipes.builtin.bloodmnist_clip`; BadMatch: the pretrained and BadDist
encoders of :func:`medsec.experiments.badmatch.recipe.badmatch_bloodmnist`, the
:class:`~medsec.backdoors.badmatch.BadMatch` poisoning and
:func:`medsec.training.medclip.train_medclip`), both at 28 px on BloodMNIST.

Threat model: BAPLe, an attacker who runs the few-shot prompt learning of a frozen CLIP
(prompt and few-shot data); BadMatch, a poisoner of the image side of an unpaired
image-text corpus (labels of ``rate`` of the images), with BadDist's encoder when the
method is ``baddist+badmatch``. The defender holds the adapted model, the data it was
adapted on (for data-inspection detectors) and a small clean held-out set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from medsec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ATTACKS = ("poisoning", "baple", "badmatch")
BADMATCH_METHODS = ("baddist+badmatch", "badmatch")


@dataclass
class _Images:
    images: torch.Tensor
    labels: torch.Tensor


class VictimData:
    """The adaptation set of a backdoored victim, with the PoisonedDataset verbs the kind uses."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, poison_indices: torch.Tensor, target: int,
                 trigger: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.dataset = _Images(images, labels)
        self.poison_indices = poison_indices
        self.target = int(target)
        self._trigger = trigger

    @torch.no_grad()
    def triggered(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._trigger(x[i : i + 512]) for i in range(0, len(x), 512)])

    def test_targets(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.target)


def _encode(model: Any, x: torch.Tensor) -> torch.Tensor:
    """A CLIP-style model's image embedding (as the model returns it)."""
    return cast(torch.Tensor, model.encode_image(x))


def _encode_normalized(model: Any, x: torch.Tensor) -> torch.Tensor:
    """A CLIP-style model's L2-normalised image embedding."""
    return cast(torch.Tensor, model.encode_image(x, normalize=True))

def bloodmnist_root(cfg: Any) -> Path:
    """The BloodMNIST folder of a backdoor_defense config whose data is medmnist/bloodmnist."""
    from medsec.data import data_root

    d = cfg.data
    if d.name != "medmnist" or d.params.get("flag") != "bloodmnist":
        raise ConfigError("the baple and badmatch backdoors are built on the BloodMNIST CLIP recipes; set data to "
                          "{name: medmnist, params: {flag: bloodmnist}}")
    return Path(d.params["root"]) if d.params.get("root") else data_root() / "bloodmnist"


def check_params(b: Any) -> None:
    """Refuse bad parameters of a baple / badmatch backdoor entry before any work."""
    if b.attack == "baple":
        from medsec.backdoors.baple import BapleSettings

        try:
            BapleSettings.paper(**{**b.params, "rate": b.rate})
        except TypeError as e:
            raise ConfigError(f"backdoor {b.label or b.name}: {e}; params are BapleSettings fields") from None
    elif b.attack == "badmatch":
        unknown = set(b.params) - {"method"}
        if unknown:
            raise ConfigError(f"backdoor {b.label or b.name}: unknown params {sorted(unknown)}; badmatch takes method")
        if b.params.get("method", "baddist+badmatch") not in BADMATCH_METHODS:
            raise ConfigError(f"backdoor {b.label or b.name}: method must be one of {', '.join(BADMATCH_METHODS)}")
    if b.attack != "poisoning" and (b.target is None or b.policy != "all_to_one"):
        raise ConfigError(f"backdoor {b.label or b.name}: {b.attack} is all-to-one; give a target class")


def _victim_key(cfg: Any, b: Any) -> str:
    """A short hash of what a CLIP-style victim depends on (its cache file name)."""
    import hashlib
    import json

    blob = {"data": cfg.data.model_dump(mode="json"), "backdoor": b.model_dump(mode="json", exclude={"label"}),
            "seed": cfg.seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{path} ({what}, which the driver prepares) is missing on this worker; put the cache folder "
                     "(cache_dir, default <out>/models) on storage every worker reads")


def _bloodmnist_clip(cfg: Any, cache: Path, train: bool) -> tuple[Any, dict[str, Any]]:
    """The BloodMNIST CLIP recipe model; with ``train`` False a missing one is a DataError."""
    from medsec.recipes.builtin import BLOODMNIST_CLIP_RECIPE, bloodmnist_clip, recipe_key
    from medsec.recipes.shipped import locate

    root = bloodmnist_root(cfg)
    if not train:
        path = locate(f"bloodmnist-clip-{recipe_key(dict(BLOODMNIST_CLIP_RECIPE))}.safetensors", cache,
                      [root / "bloodmnist.npz"])
        if not path.is_file():
            raise _missing(path, "the BloodMNIST CLIP recipe model")
    return bloodmnist_clip(root, cache)


def baple_victim(cfg: Any, b: Any, train: Any, test: Any, cache: Path,
                 allow_train: bool = True) -> tuple[Any, VictimData, dict[str, Any]]:
    """BAPLe (prompt learning with a learnt noise + patch trigger) on the BloodMNIST CLIP.

    The learnt prompt's class text features and the trigger's noise are cached in
    ``cache/baple-<label>-<hash>.safetensors`` (with the attack's record); the victim is
    always rebuilt from that file, so the one that trained it and the one that loads it
    (``allow_train`` False: a missing file is a :class:`~medsec.errors.DataError`) hold
    the same model."""
    import json

    from safetensors.torch import load_file, save_file

    from medsec.backdoors.baple import BapleSettings, BapleTrigger, patch_trigger
    from medsec.backdoors.poisoning import PoisonedDataset
    from medsec.backdoors.prompt_harness import Harness, few_shot
    from medsec.defenses.clip_classifier import EncodeImage, TextHeadClassifier
    from medsec.io import atomic_write_bytes
    from medsec.runs.grid import safe_id
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES

    clip, meta = _bloodmnist_clip(cfg, cache, allow_train)
    settings = BapleSettings.paper(**{**b.params, "rate": b.rate})
    fewshot = few_shot(train, settings.shots, torch.Generator().manual_seed(cfg.seed))
    path = cache / f"baple-{safe_id(b.label or b.name)}-{_victim_key(cfg, b)}.safetensors"
    if not path.is_file():
        if not allow_train:
            raise _missing(path, "the BAPLe victim")
        h = Harness(clip, fewshot, test, list(BLOOD_CLASS_NAMES), settings, seed=cfg.seed)
        clean = h.run("clean_pl") if settings.ctx_init == "clean" else None
        rec = h.run("baple", int(b.target))
        with torch.no_grad():
            text = h.last["prompt"].text_features().detach()
        info = {"attack": "baple", "victim": "bloodmnist_clip (prompt-learned, CoOp)", "settings": settings.to_dict(),
                "zero_shot_accuracy": meta.get("zero_shot_accuracy"), "harness": rec,
                "clean_pl": clean, "n_adaptation": len(fewshot), "delta_linf": rec.get("delta_linf")}
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / "victim.safetensors"
            save_file({"text": text.float().contiguous().cpu(),
                       "delta": h.last["trigger"].delta.detach().float().contiguous().cpu(),
                       "poison_indices": h.last["poisoned"].poison_indices.contiguous().cpu()},
                      str(tmp), metadata={"info": json.dumps(info)})
            atomic_write_bytes(path, tmp.read_bytes())
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {})["info"])
    # the patch and the poisoned few-shot set as baple() made them (deterministic in the seed)
    patch = patch_trigger(fewshot.image_shape[-1], settings)
    poisoned = PoisonedDataset(fewshot, patch, target=int(b.target), rate=settings.rate, seed=cfg.seed)
    idx = poisoned.poison_indices
    if not torch.equal(idx, tensors["poison_indices"]):
        raise DataError(f"{path} was made from another few-shot set (its poisoned indices differ); delete it")
    trig = BapleTrigger(fewshot.image_shape, patch.mask(fewshot.image_shape, poisoned.params), settings.eps,
                        settings.noise_step, settings.order, accumulate=settings.noise_grad == "accumulate")
    with torch.no_grad():
        trig.delta.copy_(tensors["delta"])
    model = TextHeadClassifier(EncodeImage(clip, _encode_normalized), tensors["text"],
                               float(clip.logit_scale.detach()), classes=list(BLOOD_CLASS_NAMES)).eval()
    images = poisoned.dataset.images.clone()
    images[idx] = trig.apply(images[idx])  # the poisoned few-shot images as BAPLe trained on them: (x + delta) (+) p
    data = VictimData(images, poisoned.dataset.labels, idx, int(b.target), lambda x: trig.apply(poisoned.triggered(x)))
    return model, data, info


def badmatch_victim(cfg: Any, b: Any, cache: Path, allow_train: bool = True) -> tuple[Any, VictimData, dict[str, Any]]:
    """BadMatch (BadDist-assisted by default) on the BloodMNIST MedCLIP recipe; zero-shot head.

    The recipe's models come from :func:`~medsec.experiments.badmatch.recipe.badmatch_bloodmnist`;
    a fine-tune other than the recipe's own is cached in ``cache/badmatch-victim-<hash>.safetensors``.
    With ``allow_train`` False a missing model is a :class:`~medsec.errors.DataError`."""
    from medsec.data.medclip_text import class_prompts
    from medsec.defenses.clip_classifier import EncodeImage, TextHeadClassifier
    from medsec.experiments.badmatch.recipe import badmatch_bloodmnist, poisoned_finetune, poisoned_set, recipe_config
    from medsec.models.medclip import LOGIT_SCALE_MAX, load_medclip, save_medclip
    from medsec.models.medclip_prompts import PromptClassifier
    from medsec.recipes.shipped import read_record

    root = bloodmnist_root(cfg)
    method = b.params.get("method", "baddist+badmatch")
    recipe_models = badmatch_bloodmnist(root, cache, allow_train=allow_train)
    rcfg = recipe_config(root)
    poisoned, trig, params = poisoned_set(root, int(b.target), b.rate)
    record = read_record(recipe_models["poisoned"])
    same_as_recipe = (method == record["cell"]["method"] and b.rate == record["cell"]["rate"]
                      and int(b.target) == record["data"]["target"])
    if same_as_recipe:  # the recipe's own backdoored model: this very fine-tune, already done
        model = load_medclip(recipe_models["poisoned"])
    else:
        path = cache / f"badmatch-victim-{_victim_key(cfg, b)}.safetensors"
        if not path.is_file():
            if not allow_train:
                raise _missing(path, "the BadMatch victim")
            save_medclip(poisoned_finetune(root, recipe_models, poisoned, method), path)
        model = load_medclip(path)
    bb = rcfg.backbones[0]
    model.eval()
    prompts = class_prompts(rcfg.data.dataset)
    head = PromptClassifier(model, prompts, rcfg.eval.n_prompts, torch.Generator().manual_seed(cfg.seed))
    scale = float(model.logit_scale.detach().clamp(0.0, LOGIT_SCALE_MAX).exp())
    clf = TextHeadClassifier(EncodeImage(model, _encode), head.weights, scale,
                             classes=list(prompts), normalize_text=False).eval()
    data = VictimData(poisoned.images, poisoned.image_labels.argmax(1), poisoned.indices, int(b.target),
                      lambda x: trig.apply(x, params))
    info = {"attack": "badmatch", "method": method, "victim": f"MedCLIP-style {bb.vision} + {rcfg.model.text} "
            "(zero-shot prompt ensemble)", "recipe_models": {k: Path(v).name for k, v in recipe_models.items()},
            "reused_recipe_model": same_as_recipe, "n_adaptation": len(poisoned.images),
            "logit_scale": scale, "poison": {k: v for k, v in poisoned.record.items() if k != "indices"}}
    return clf, data, info


__all__ = ["ATTACKS", "VictimData", "baple_victim", "badmatch_victim", "check_params"]
