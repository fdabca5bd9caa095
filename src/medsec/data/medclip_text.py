"""Sentence templates and zero-shot prompts for label-based (MedCLIP-style) unpaired
image-text training on datasets that have class labels but no reports.

Threat model: none (data). Sentences are generated from templates that mention one or
more classes; each sentence's label vector marks the classes it mentions. They are sampled
independently of the images during training, so images and sentences are paired only
through their label vectors, as MedCLIP pairs MIMIC images with sentences through CheXpert
labels (Wang et al., EMNLP 2022). Zero-shot prompts are a separate set (other templates and
synonyms), so the evaluation does not just replay training sentences.

Example:
    >>> bank = sentence_bank("bloodmnist")
    >>> bank.labels.shape[1], len(class_prompts("bloodmnist"))
    (8, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsec.errors import ConfigError, InputError


def _label_vector(classes: list[int], k: int) -> torch.Tensor:
    """The 0/1 label vector (k,) marking ``classes``."""
    return F.one_hot(torch.tensor(classes), k).float().amax(0)


@dataclass
class SentenceBank:
    """Sentences with their label vectors (S, K), sampled independently of the images."""

    sentences: list[str]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.float32)
        if not self.sentences or self.labels.dim() != 2 or self.labels.shape[0] != len(self.sentences):
            raise InputError(f"a sentence bank needs one label vector per sentence: {len(self.sentences)} sentences, "
                             f"labels {tuple(self.labels.shape)}")
        if not bool(torch.isfinite(self.labels).all()):
            raise InputError("sentence label vectors contain NaN/Inf")



def label_sentences(templates: Sequence[str], classes: Sequence[str], multi: Sequence[str] = (),
                    pairs: int = 0, generator: torch.Generator | None = None) -> SentenceBank:
    """A sentence bank from templates: every single-class template for every class, plus
    ``pairs`` two-class sentences from ``multi`` templates (label vector with two ones).

    Templates use ``{c}`` (single) or ``{a}`` and ``{b}`` (two classes).
    """
    k = len(classes)
    sents, labs = [], []
    for t in templates:
        for i, c in enumerate(classes):
            sents.append(t.format(c=c))
            labs.append(_label_vector([i], k))
    if multi and pairs:
        for _ in range(int(pairs)):
            a, b = torch.randperm(k, generator=generator)[:2].tolist()
            t = multi[int(torch.randint(0, len(multi), (1,), generator=generator))]
            sents.append(t.format(a=classes[a], b=classes[b]))
            labs.append(_label_vector([a, b], k))
    return SentenceBank(sents, torch.stack(labs))


# Class phrases in dataset class order (BloodMNIST follows medmnist.INFO; BUSI the folder names).
CLASS_PHRASES: dict[str, list[str]] = {
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"],
    "busi": ["benign lesion", "malignant tumour", "normal breast tissue"],
}
# Synonyms / descriptions used only by the zero-shot prompts.
PROMPT_PHRASES: dict[str, list[list[str]]] = {
    "bloodmnist": [["basophil", "basophilic granulocyte"], ["eosinophil", "eosinophilic granulocyte"],
                   ["erythroblast", "nucleated red blood cell"],
                   ["immature granulocyte", "myelocyte", "metamyelocyte", "promyelocyte"],
                   ["lymphocyte", "small lymphocyte"], ["monocyte", "large monocyte"],
                   ["neutrophil", "segmented neutrophil", "mature neutrophil"], ["platelet", "thrombocyte"]],
    "busi": [["benign lesion", "benign mass", "benign findings"], ["malignant tumour", "malignant mass", "cancer"],
             ["normal breast tissue", "no lesion", "normal findings"]],
}
MODALITY = {"bloodmnist": "blood smear", "busi": "breast ultrasound"}

# Short report-like sentences: with random-weight text towers, the class phrase must not be
# drowned in template words (the text feature is a mean over tokens).
TRAIN_TEMPLATES = ["{c}", "a {c}", "{c} seen", "a {c} cell", "shows {c}", "{m} with a {c}"]
MULTI_TEMPLATES = ["{a} and {b}", "a {a} and a {b}", "shows {a} and {b}"]
PROMPT_TEMPLATES = ["a photo of a {c}.", "an image showing a {c}.", "{c}.", "a {m} containing a {c}.",
                    "the cell is a {c}.", "a picture of a {c} in a {m}."]


def _check(dataset: str) -> None:
    if dataset not in CLASS_PHRASES:
        raise ConfigError(f"no sentence templates for dataset {dataset!r}; known: {', '.join(CLASS_PHRASES)}")


def sentence_bank(dataset: str, pairs: int = 64, seed: int = 0, synonyms: bool = False) -> SentenceBank:
    """Training sentences: every single-class template for every class plus ``pairs`` two-class ones.

    With ``synonyms`` the single-class sentences also name each class by its other names
    (the ones in :data:`PROMPT_PHRASES`), as real reports use several names for one finding;
    the zero-shot prompts still use their own templates. Without it, prompt words such as
    "thrombocyte" are never seen in training and their random token embeddings make the
    prompt-sampled accuracy noisy (docs/badmatch.md).
    """
    _check(dataset)
    m = MODALITY[dataset]
    single = [t.replace("{m}", m) for t in TRAIN_TEMPLATES]
    multi = [t.replace("{m}", m) for t in MULTI_TEMPLATES]
    bank = label_sentences(single, CLASS_PHRASES[dataset], multi, pairs, torch.Generator().manual_seed(seed))
    if not synonyms:
        return bank
    k = len(CLASS_PHRASES[dataset])
    sents, labs = list(bank.sentences), [bank.labels]
    for i, (name, syns) in enumerate(zip(CLASS_PHRASES[dataset], PROMPT_PHRASES[dataset])):
        extra = [t.format(c=s) for t in single for s in syns if s != name]
        sents += extra
        labs.append(torch.nn.functional.one_hot(torch.full((len(extra),), i), k).float())
    return SentenceBank(sents, torch.cat(labs))


def class_prompts(dataset: str) -> dict[str, list[str]]:
    """Candidate zero-shot prompts per class (templates x synonyms), in class order."""
    _check(dataset)
    m = MODALITY[dataset]
    out = {}
    for name, syns in zip(CLASS_PHRASES[dataset], PROMPT_PHRASES[dataset]):
        out[name] = [t.replace("{m}", m).format(c=s) for t in PROMPT_TEMPLATES for s in syns]
    return out


def vocabulary_sentences(dataset: str) -> list[str]:
    """Every sentence the tokenizer must know (training sentences and prompts)."""
    bank = sentence_bank(dataset, pairs=0)
    m = MODALITY[dataset]
    multi = [t.replace("{m}", m).format(a=a, b=b) for t in MULTI_TEMPLATES for a in CLASS_PHRASES[dataset]
             for b in CLASS_PHRASES[dataset] if a != b]
    return bank.sentences + multi + sum(class_prompts(dataset).values(), [])
