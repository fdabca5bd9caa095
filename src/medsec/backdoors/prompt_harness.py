"""The BAPLe comparison harness: Clean FT/PL, BadNets, WaNet and FIBA under FT and PL, and
BAPLe, on one few-shot set, every target class in turn (Hanif et al., "BAPLe: Backdoor
Attacks on Medical Foundational Models using Prompt Learning", MICCAI 2024, Tables 1-2).

Threat model: data poisoning of few-shot adaptation. In ``*_FT`` rows the attacker poisons
the images and labels that full fine-tuning trains on (image tower + linear head); in
``*_PL`` rows those that CoOp prompt learning trains on (encoders frozen); BAPLe also
learns its noise trigger with the prompt. Every poisoned method uses the same poisoned
indices (the same rate, drawn from the non-target classes with the same seed).

Cells are CA / BA: clean accuracy on the clean test set, and backdoor accuracy with every
test image triggered and the target as the label (target-class images included, as the
paper counts it); ASR without target-class images and clean macro-F1 are recorded too.
Clean rows do not depend on the target and are trained once.

Example (every method trains, minutes each, so the doctest skips it):
    >>> h = Harness(clip, fewshot, test, class_names)              # doctest: +SKIP
    >>> h.run("baple", target=0)["backdoor_accuracy"]               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from medsec.backdoors import triggers
from medsec.backdoors.baple import PAPER_DEFAULTS, BapleSettings, baple, scaled_patch
from medsec.backdoors.metrics import backdoor_metrics
from medsec.backdoors.poisoning import PoisonedDataset
from medsec.errors import DataError, InputError

log = logging.getLogger(__name__)

METHODS = ("clean_ft", "badnets_ft", "wanet_ft", "fiba_ft", "clean_pl", "badnets_pl", "wanet_pl", "fiba_pl", "baple")
LABELS = {"clean_ft": "Clean_FT", "badnets_ft": "BadNets_FT", "wanet_ft": "WaNet_FT", "fiba_ft": "FIBA_FT",
          "clean_pl": "Clean_PL", "badnets_pl": "BadNets_PL", "wanet_pl": "WaNet_PL", "fiba_pl": "FIBA_PL",
          "baple": "BAPLe"}


def few_shot(dataset: Any, shots: int, generator: torch.Generator | None = None) -> Any:
    """``shots`` random images per class of ``dataset`` (an ImageDataset), class-sorted."""
    labels = dataset.labels
    picks = []
    for c in range(dataset.num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots:
            raise DataError(f"class {dataset.classes[c]!r} has {len(idx)} images, fewer than {shots} shots; "
                            "lower shots")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:shots]])
    return dataset.subset(torch.cat(picks))


def baseline_trigger(name: str, image_size: int, settings: BapleSettings = PAPER_DEFAULTS) -> triggers.Trigger:
    """The fixed trigger of a baseline: BadNets (checkerboard, BAPLe's patch size and place),
    WaNet or FIBA (their medsec defaults)."""
    if name == "badnets":
        side, margin = scaled_patch(image_size, settings.patch_size_224, settings.patch_margin_224)
        return triggers.create("badnets", size=side, position=settings.position, pattern="checkerboard", margin=margin)
    if name in ("wanet", "fiba"):
        return triggers.create(name)
    raise InputError(f"no baseline trigger {name!r}; use badnets, wanet or fiba")


class Harness:
    """Runs the methods of :data:`METHODS` on one model and one few-shot set.

    Args:
        clip: the frozen :class:`~medsec.models.clip.ClipModel`.
        train: the few-shot training set (ImageDataset).
        test: the test set (ImageDataset).
        class_names: the class names put in the prompts.
        settings: BAPLe's (and the PL baselines') hyper-parameters.
        ft_lr, ft_epochs, ft_weight_decay: full fine-tuning (AdamW, cosine; ``ft_epochs``
            defaults to ``settings.epochs``).
        seed: poisoned indices, trigger parameters, initialisations and batch orders.
        cache: cached image features in prompt learning (False: the naive loop).
    """

    def __init__(self, clip: Any, train: Any, test: Any, class_names: list[str],
                 settings: BapleSettings = PAPER_DEFAULTS, ft_lr: float = 5e-5, ft_epochs: int | None = None,
                 ft_weight_decay: float = 0.01, seed: int = 0, cache: bool = True) -> None:
        from medsec.training.coop import encode_images, freeze

        if len(class_names) != train.num_classes or test.num_classes != train.num_classes:
            raise InputError(f"{len(class_names)} class names, {train.num_classes} train and {test.num_classes} "
                             "test classes; they must agree")
        if train.image_shape != test.image_shape:
            raise InputError(f"train images {train.image_shape} and test images {test.image_shape} differ in shape")
        self.clip, self.train, self.test, self.class_names = clip, train, test, list(class_names)
        self.settings, self.seed, self.cache = settings, int(seed), cache
        self.ft_lr, self.ft_epochs, self.ft_wd = float(ft_lr), int(ft_epochs or settings.epochs), float(ft_weight_decay)
        freeze(clip)
        self.test_features = encode_images(clip, test.images)
        self.clean_ctx: torch.Tensor | None = None
        self._trigger_params: dict[str, Any] = {}
        self._triggered_test: dict[str, torch.Tensor] = {}

    def _gen(self, *salt: Any) -> torch.Generator:
        import zlib

        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(repr(salt).encode()))

    def text_features(self) -> torch.Tensor:
        """Zero-shot class features from the plain class-name prompts (initialise the FT head)."""
        with torch.no_grad():
            features: torch.Tensor = self.clip.encode_text(self.clip.tokenize([f"{c}." for c in self.class_names]),
                                                            normalize=True)
        return features

    def trigger(self, name: str) -> tuple[triggers.Trigger, Any]:
        """A baseline trigger and its parameters (drawn once, shared by every target and both modes)."""
        trig = baseline_trigger(name, self.train.image_shape[-1], self.settings)
        if name not in self._trigger_params:
            self._trigger_params[name] = trig.sample_params(self.train.image_shape, self._gen("trigger", name))
        return trig, self._trigger_params[name]

    def triggered_test_images(self, name: str) -> torch.Tensor:
        trig, params = self.trigger(name)
        return torch.cat([trig.apply(self.test.images[i : i + 512], params) for i in range(0, len(self.test), 512)])

    def _metrics(self, pred_clean: torch.Tensor, pred_trig: torch.Tensor | None, target: int | None) -> dict[str, Any]:
        labels = self.test.labels
        if pred_trig is None:
            acc = float((pred_clean == labels).float().mean())
            from torchmetrics.functional.classification import multiclass_f1_score

            f1 = float(multiclass_f1_score(pred_clean, labels, num_classes=self.test.num_classes, average="macro"))
            return {"clean_accuracy": acc, "backdoor_accuracy": None, "attack_success_rate": None,
                    "clean_macro_f1": f1}
        m = backdoor_metrics(pred_clean, pred_trig, labels, torch.full_like(labels, int(target)),  # type: ignore[arg-type]
                             self.test.num_classes)
        return {k: m[k] for k in ("clean_accuracy", "backdoor_accuracy", "attack_success_rate", "clean_macro_f1")}

    def _pl_predict(self, prompt: Any, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred: torch.Tensor = (features @ prompt.text_features().T).argmax(1)
        return pred

    def run(self, method: str, target: int | None = None) -> dict[str, Any]:
        """Train ``method`` (one of :data:`METHODS`) for ``target`` and return its metrics record."""
        from medsec.training.clip_finetune import ClipFinetuned, train_finetune
        from medsec.training.coop import PromptLearner, encode_images, train_coop

        if method not in METHODS:
            from medsec.registry import suggest

            raise InputError(f"unknown method {method!r}.{suggest(method, METHODS)} Use one of {', '.join(METHODS)}.")
        clean = method.startswith("clean")
        if not clean and (target is None or not 0 <= int(target) < self.train.num_classes):
            raise InputError(f"{method} needs a target class in 0..{self.train.num_classes - 1}, got {target!r}")
        s, t0 = self.settings, time.perf_counter()
        g = self._gen(method, target)
        record: dict[str, Any] = {"method": method, "target": None if clean else int(target)}  # type: ignore[arg-type]
        if method == "baple":
            out = baple(self.clip, self.train, self.class_names, int(target), s,  # type: ignore[arg-type]
                        clean_ctx=self.clean_ctx, seed=self.seed, cache=self.cache, generator=g)
            prompt, trig, poisoned = out["prompt"], out["trigger"], out["poisoned"]
            x_trig = trig.apply(poisoned.triggered(self.test.images))
            pred_clean = self._pl_predict(prompt, self.test_features)
            pred_trig = self._pl_predict(prompt, encode_images(self.clip, x_trig))
            record.update(poison_count=len(poisoned.poison_indices), images_encoded=out["result"].images_encoded,
                          delta_linf=float(trig.delta.detach().abs().max()))
            self.last = out
        elif method.endswith("_pl"):
            if clean:
                images, labels = self.train.images, self.train.labels
                init: Any = "random"
            else:
                trig_, params = self.trigger(method[:-3])
                poisoned = PoisonedDataset(self.train, trig_, target=int(target), rate=s.rate, seed=self.seed,  # type: ignore[arg-type]
                                           params=params)
                images, labels = poisoned.dataset.images, poisoned.dataset.labels
                record["poison_count"] = len(poisoned.poison_indices)
                if s.ctx_init == "clean" and self.clean_ctx is None:
                    raise InputError("ctx_init='clean' needs Clean PL to run first (its context starts the prompt)")
                init = self.clean_ctx if s.ctx_init == "clean" else "random"
            prompt = PromptLearner(self.clip, self.class_names, s.n_ctx, init=init, generator=g)
            res = train_coop(self.clip, prompt, images, labels, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                             momentum=s.momentum, weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs,
                             warmup_lr=s.warmup_lr, cache=self.cache, generator=g)
            record["images_encoded"] = res.images_encoded
            pred_clean = self._pl_predict(prompt, self.test_features)
            if clean:
                self.clean_ctx = prompt.ctx.detach().clone()
                pred_trig = None
            else:
                name = method[:-3]
                if name not in self._triggered_test:
                    self._triggered_test[name] = encode_images(self.clip, self.triggered_test_images(name))
                pred_trig = self._pl_predict(prompt, self._triggered_test[name])
        else:  # full fine-tuning
            images, labels = self.train.images, self.train.labels
            if not clean:
                trig_, params = self.trigger(method[:-3])
                poisoned = PoisonedDataset(self.train, trig_, target=int(target), rate=s.rate, seed=self.seed,  # type: ignore[arg-type]
                                           params=params)
                images, labels = poisoned.dataset.images, poisoned.dataset.labels
                record["poison_count"] = len(poisoned.poison_indices)
            model = ClipFinetuned(self.clip, self.text_features())
            train_finetune(model, images, labels, epochs=self.ft_epochs, batch_size=s.batch_size, lr=self.ft_lr,
                           weight_decay=self.ft_wd, generator=g)
            pred_clean = model.predict(self.test.images)
            pred_trig = None if clean else model.predict(self.triggered_test_images(method[:-3]))
        record.update(self._metrics(pred_clean, pred_trig, target))
        record["runtime_s"] = time.perf_counter() - t0
        log.info("%s target %s: CA %.3f BA %s (%.1fs)", LABELS[method], target, record["clean_accuracy"],
                 record["backdoor_accuracy"], record["runtime_s"])
        return record


def average_over_targets(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: mean CA, BA, ASR and macro-F1 over its target records, and the targets."""
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        agg: dict[str, Any] = {"method": method, "label": LABELS[method],
                               "targets": [r["target"] for r in rows if r["target"] is not None]}
        for k in ("clean_accuracy", "backdoor_accuracy", "attack_success_rate", "clean_macro_f1"):
            vals = [r[k] for r in rows if r.get(k) is not None]
            agg[k] = sum(vals) / len(vals) if vals else None
        out[method] = agg
    return out


__all__ = ["METHODS", "LABELS", "Harness", "few_shot", "baseline_trigger", "average_over_targets"]
