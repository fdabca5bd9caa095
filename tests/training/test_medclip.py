"""MedCLIP-style model, soft-target loss, unpaired training and the zero-shot prompt classifier."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medsec.data.medclip_text import SentenceBank, label_sentences
from medsec.errors import ConfigError, InputError
from medsec.models.medclip import load_medclip, medclip, save_medclip, word_tokenizer
from medsec.models.medclip_prompts import PromptClassifier, zero_shot_predictions
from medsec.training.medclip import one_hot, soft_clip_loss, train_medclip

pytestmark = pytest.mark.unit

SENTS = ["a dark cell", "a bright cell", "an image of a dark cell", "an image of a bright cell"]


def _tiny(vision: str = "tiny-resnet", size: int = 16, **kw: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return medclip(vision=vision, text="tiny-bert", sentences=SENTS, image_size=size, embed_dim=16, **kw)


def test_soft_clip_loss_equals_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 3.0]])
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    sim = [[sum(img[i][k] * txt[j][k] for k in range(2)) for j in range(3)] for i in range(2)]

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(float(v)) for v in row]
        return [v / sum(e) for v in e]

    lg = logits.tolist()
    img_loss = -sum(q * math.log(p) for i in range(2) for q, p in zip(softmax(sim[i]), softmax(lg[i]))) / 2
    simt = [[sim[i][j] for i in range(2)] for j in range(3)]
    lgt = [[lg[i][j] for i in range(2)] for j in range(3)]
    txt_loss = -sum(q * math.log(p) for j in range(3) for q, p in zip(softmax(simt[j]), softmax(lgt[j]))) / 3
    assert float(soft_clip_loss(logits, img, txt)) == pytest.approx((img_loss + txt_loss) / 2, rel=1e-6)


def test_soft_clip_loss_reduces_to_clip_loss_for_distinct_onehots() -> None:
    # with one-hot labels 100 apart the soft targets are (almost) the identity: CLIP's loss
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    lab = 100 * torch.eye(4)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(4))
            + torch.nn.functional.cross_entropy(logits.t(), torch.arange(4))) / 2
    assert float(soft_clip_loss(logits, lab, lab)) == pytest.approx(float(clip), rel=1e-5)


def test_soft_clip_loss_bad_shapes() -> None:
    with pytest.raises(InputError, match="do not match"):
        soft_clip_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(InputError, match="2-D"):
        soft_clip_loss(torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 4))


def test_word_tokenizer_unknown_words_and_padding() -> None:
    tok = word_tokenizer(SENTS, max_length=8)
    enc = tok(["a dark cell", "a purple cell of a kind"], padding=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape[0] == 2 and ids[0, 0] == tok.cls_token_id
    assert tok.unk_token_id in ids[1].tolist() and tok.unk_token_id not in ids[0].tolist()
    assert int(enc["attention_mask"][0].sum()) == 5  # [CLS] a dark cell [SEP]
    with pytest.raises(InputError, match="at least one sentence"):
        word_tokenizer([])


@pytest.mark.parametrize("vision", ["tiny-resnet", "tiny-vit"])
def test_towers_and_checkpoint_round_trip(vision: str, tmp_path: Path) -> None:
    m = _tiny(vision).eval()
    x = torch.rand(3, 3, 16, 16)
    e = m.encode_image(x)
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    t = m.encode_text(["a dark cell", "a bright cell"])
    assert t.shape == (2, 16)
    assert m(x, ["a dark cell"]).shape == (3, 1)
    path = save_medclip(m, tmp_path / "m.safetensors", extra={"note": 1})
    m2 = load_medclip(path)
    assert torch.allclose(m2.encode_image(x), e, atol=1e-6)
    assert torch.allclose(m2.encode_text(["a dark cell", "a bright cell"]), t, atol=1e-6)


def test_reference_architectures_build_offline() -> None:
    # the reference towers with random weights: ResNet50 (2048 -> 512) and Swin-tiny (768 -> 512)
    r = medclip(vision="resnet50", text="tiny-bert", sentences=SENTS, image_size=64, embed_dim=512)
    assert r.vision.projection.in_features == 2048 and r.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    s = medclip(vision="swin-tiny", text="tiny-bert", sentences=SENTS, image_size=224, embed_dim=512)
    assert s.vision.projection.in_features == 768
    b = medclip(vision="tiny-resnet", text="bert", sentences=SENTS, image_size=16,
                text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 64})
    assert b.text.projection.in_features == 32 and b.encode_text(["a dark cell"]).shape == (1, 512)


def test_builder_bad_input() -> None:
    with pytest.raises(InputError, match="sentences"):
        medclip(vision="tiny-resnet", text="tiny-bert", image_size=16)
    with pytest.raises(ConfigError, match="unknown text tower"):
        medclip(vision="tiny-resnet", text="gpt", sentences=SENTS, image_size=16)
    with pytest.raises(ConfigError, match="unknown vision tower"):
        medclip(vision="resnet5O", text="tiny-bert", sentences=SENTS, image_size=16)
    with pytest.raises(ConfigError, match="layers"):
        medclip(vision="tiny-resnet", text="tiny-bert", sentences=SENTS, image_size=16,
                text_config={"num_hidden_layers": 1})
    m = _tiny()
    with pytest.raises(InputError):
        m.encode_image(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(InputError, match="non-empty list"):
        m.encode_text("a dark cell")


def _toy_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    x = x + 0.6 * y.float()[:, None, None, None]
    return x, y


def test_unpaired_training_learns_zero_shot() -> None:
    x, y = _toy_data()
    bank = label_sentences(["a {c} cell", "an image of a {c} cell"], ["dark", "bright"])
    m = _tiny(logit_scale_init=0.0)  # random-weight towers: start at scale 1 (docs/badmatch.md)
    hist = train_medclip(m, x, one_hot(y, 2), bank, epochs=8, lr=3e-3, batch_size=16,
                         generator=torch.Generator().manual_seed(0))
    assert hist["loss_last"] < hist["loss_first"]
    prompts = {"dark": ["a dark cell", "an image of a dark cell"], "bright": ["a bright cell", "an image of a bright cell"]}
    preds = zero_shot_predictions(m, prompts, [x, 1 - x], n_prompts=1, n_samplings=3)
    assert len(preds) == 3 and all(len(p) == 2 for p in preds)
    accs = [float((p[0] == y).float().mean()) for p in preds]
    assert all(a >= 0.9 for a in accs), accs


def test_prompt_classifier_samples_per_class() -> None:
    m = _tiny()
    prompts = {"dark": SENTS[0::2], "bright": SENTS[1::2]}
    a = PromptClassifier(m, prompts, n_prompts=1, generator=torch.Generator().manual_seed(0))
    b = PromptClassifier(m, prompts, n_prompts=1, generator=torch.Generator().manual_seed(0))
    assert a.prompts == b.prompts and all(len(p) == 1 for p in a.prompts)
    assert all(p[0] in prompts[c] for p, c in zip(a.prompts, prompts))
    full = PromptClassifier(m, prompts, n_prompts=5)
    assert [sorted(p) for p in full.prompts] == [sorted(v) for v in prompts.values()]
    # the class score is the mean of the per-prompt logits (the reference's ensemble)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        m.eval()
        per = m(x, prompts["dark"]).mean(1)
        assert torch.allclose(full(x)[:, 0], per, atol=1e-5)
    with pytest.raises(InputError, match="at least one prompt"):
        PromptClassifier(m, {"dark": []})
    with pytest.raises(InputError, match="n_prompts"):
        PromptClassifier(m, prompts, n_prompts=0)


def test_training_bad_input() -> None:
    x, y = _toy_data(8)
    bank = label_sentences(["a {c} cell"], ["dark", "bright"])
    m = _tiny()
    with pytest.raises(InputError, match="label vectors must have shape"):
        train_medclip(m, x, one_hot(y, 3), bank)
    with pytest.raises(InputError, match="NaN"):
        train_medclip(m, x, torch.full((8, 2), float("nan")), bank)
    with pytest.raises(InputError, match="epochs"):
        train_medclip(m, x, one_hot(y, 2), bank, epochs=0)
    with pytest.raises(InputError, match="one label vector per sentence"):
        SentenceBank(["a"], torch.zeros(2, 2))
