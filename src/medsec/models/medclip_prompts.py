"""Zero-shot prompt classification with prompt ensembles sampled per class, as MedCLIP
evaluates (Wang et al., EMNLP 2022; reference ``PromptClassifier`` with
``generate_chexpert_class_prompts(n=10)`` and ``MainEvaluator``).

For each class, ``n_prompts`` prompts are drawn from that class's candidate prompts; the
class score of an image is the mean over its prompts of exp(tau) * cos(image, prompt)
(the reference averages the logits over the ensemble, which equals scoring against the
unnormalised mean of the prompt embeddings). Because the prompts are sampled, accuracy is
reported as mean and std over ``n_samplings`` draws (the reference: 5 runs).

Threat model: none (evaluation); used for clean accuracy and attack success of BadMatch.

Example:
    >>> import torch
    >>> from medsec.models.medclip import medclip
    >>> prompts = {"a": ["an a cell", "a cell of type a"], "b": ["a b cell", "a cell of type b"]}
    >>> m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=sum(prompts.values(), []), image_size=28)
    >>> clf = PromptClassifier(m, prompts, n_prompts=1, generator=torch.Generator().manual_seed(0))
    >>> clf(torch.rand(3, 3, 28, 28)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medsec.errors import InputError
from medsec.models.medclip import MedCLIP


class PromptClassifier(nn.Module):
    """Class logits from a MedCLIP-style model and per-class prompt ensembles.

    Args:
        model: a :class:`~medsec.models.medclip.MedCLIP`.
        class_prompts: class name -> candidate prompts (in class order).
        n_prompts: prompts drawn per class (without replacement; all if fewer).
        generator: draws the prompts.
    """

    weights: torch.Tensor  # (classes, embed_dim) buffer: the mean prompt embedding of each class

    def __init__(self, model: MedCLIP, class_prompts: Mapping[str, Sequence[str]], n_prompts: int = 10,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not class_prompts or any(not list(p) for p in class_prompts.values()):
            raise InputError("class_prompts must give at least one prompt for every class")
        if int(n_prompts) < 1:
            raise InputError(f"n_prompts must be >= 1, got {n_prompts}")
        self.model = model
        self.classes = list(class_prompts)
        self.prompts: list[list[str]] = []
        for c in self.classes:
            cand = [str(p) for p in class_prompts[c]]
            pick = torch.randperm(len(cand), generator=generator)[: int(n_prompts)].tolist()
            self.prompts.append([cand[i] for i in pick])
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                weights = torch.stack([model.encode_text(p).mean(0) for p in self.prompts])
        finally:
            model.train(was)
        self.register_buffer("weights", weights)

    @property
    def spec(self) -> Any:
        return self.model.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.encode_image(x), self.weights)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            out = [self(x[i : i + batch_size].to(self.weights.device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        finally:
            self.model.train(was)
        return torch.cat(out)


@torch.no_grad()
def image_embeddings(model: MedCLIP, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings in eval mode, in batches (on the model's device)."""
    was = model.training
    model.eval()
    dev = model.logit_scale.device
    try:
        return torch.cat([model.encode_image(x[i : i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def zero_shot_predictions(model: MedCLIP, class_prompts: Mapping[str, Sequence[str]], images: Sequence[torch.Tensor],
                          n_prompts: int = 10, n_samplings: int = 5, seed: int = 0) -> list[list[torch.Tensor]]:
    """Predictions for each image set in ``images`` under ``n_samplings`` prompt draws
    (the same draw is used for every set of one sampling, so clean and triggered images are
    classified by the same ensemble). Returns ``[sampling][set] -> (N,)`` predictions.

    Each image set is encoded once; only the prompt ensembles change between samplings.
    """
    if int(n_samplings) < 1:
        raise InputError(f"n_samplings must be >= 1, got {n_samplings}")
    embs = [image_embeddings(model, x) for x in images]
    out = []
    was = model.training
    model.eval()
    try:
        for s in range(int(n_samplings)):
            clf = PromptClassifier(model, class_prompts, n_prompts, torch.Generator().manual_seed(int(seed) + s))
            with torch.no_grad():
                out.append([model.logits(e, clf.weights).argmax(1).cpu() for e in embs])
    finally:
        model.train(was)
    return out
