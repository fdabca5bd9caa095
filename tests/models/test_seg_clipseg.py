"""CLIPSeg + VLSM adapters, built offline from a small CLIPSegConfig with random weights."""

from __future__ import annotations

import pytest
import torch

import medsec
from medsec.errors import ConfigError
from medsec.models.clipseg import SMALL_CONFIG, Adapter

pytestmark = pytest.mark.unit

pytest.importorskip("transformers")

CFG = {**SMALL_CONFIG, "vision_config": {**SMALL_CONFIG["vision_config"], "image_size": 32, "patch_size": 8}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(adapter: str | None = "dense", **kw) -> medsec.models.Segmenter:
    torch.manual_seed(0)
    return medsec.models.create("clipseg", pretrained=False, config=CFG, adapter=adapter, prompt="polyp", **kw)


def test_builds_offline_with_a_prompt() -> None:
    seg = small()
    x = torch.rand(2, 3, 32, 32)
    out = seg(x)
    assert out.shape == (2, 1, 32, 32) and seg.prompted and seg.prompt == "polyp"
    other = seg.set_prompt("an instrument")(x)
    assert not torch.allclose(out, other)  # the text conditions the mask


def test_only_adapter_parameters_train() -> None:
    seg = small("dense")
    trainable = {n for n, p in seg.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    n_adapters = sum(isinstance(m, Adapter) for m in seg.modules())
    # dense: attention + MLP of the first max(extract_layers)+1 = 4 vision layers and of the 2 text layers
    assert n_adapters == 2 * 4 + 2 * 2
    assert all(m.down.out_features == 64 for m in seg.modules() if isinstance(m, Adapter))
    shallow = small("shallow")
    names = {n for n, p in shallow.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("net.shallow.") for n in names)
    assert sum(isinstance(m, Adapter) for m in shallow.modules()) == len(CFG["extract_layers"])
    full = small(None)
    assert all(p.requires_grad for p in full.parameters())


def test_fine_tuning_changes_only_adapters() -> None:
    from medsec.data import SegmentationDataset
    from medsec.training import train_segmenter

    seg = small("dense")
    before = {n: p.detach().clone() for n, p in seg.named_parameters()}
    x = torch.rand(4, 3, 32, 32)
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    y[:, 8:24, 8:24] = 1
    train_segmenter(seg, SegmentationDataset(x, y), epochs=2, batch_size=4, lr=1e-3)
    changed = {n for n, p in seg.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(".adapter." in n for n in changed)
    assert all(p.grad is None for p in seg.parameters())


def test_attack_runs_through_the_text_prompted_model() -> None:
    seg = small("dense")
    x = torch.rand(2, 3, 32, 32)
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 8:24, 8:24] = 1
    from medsec.objectives.dice_ce import DiceCE

    clean = DiceCE().loss(seg(x), y)
    res = medsec.attacks.create("pgd", steps=5)(seg, x, y, threat=medsec.ThreatModel("linf", 8 / 255),
                                                generator=torch.Generator().manual_seed(0))
    assert (res.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (res.loss > clean).all()  # input gradients reach the image through the vision encoder
    assert all(p.grad is None for p in seg.parameters())


def test_by_name_loading_calls_from_pretrained(monkeypatch, tmp_path) -> None:
    """``hf:CIDAS/clipseg-rd64-refined`` goes through transformers' from_pretrained with that id
    (here answered from a local save_pretrained folder, since the hub is unreachable)."""
    import transformers

    small(None).net.model.save_pretrained(tmp_path)
    calls = []
    real = transformers.CLIPSegForImageSegmentation.from_pretrained

    def fake_model(name, *a, **k):
        calls.append(("model", name))
        return real(str(tmp_path))

    class FakeTok:
        def __call__(self, texts, padding=True, return_tensors="pt"):
            return {"input_ids": torch.tensor([[257, 10, 258]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}

    def fake_tok(name, *a, **k):
        calls.append(("tokenizer", name))
        return FakeTok()

    monkeypatch.setattr(transformers.CLIPSegForImageSegmentation, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    seg = medsec.models.create("hf:CIDAS/clipseg-rd64-refined", adapter="shallow", prompt="polyp")
    assert calls == [("model", "CIDAS/clipseg-rd64-refined"), ("tokenizer", "CIDAS/clipseg-rd64-refined")]
    assert seg(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_bad_configs_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="adapter"):
        small("deep")
    with pytest.raises(ConfigError, match="extract_layers"):
        medsec.models.create("clipseg", pretrained=False, config={**CFG, "extract_layers": [7]})
    with pytest.raises(ConfigError, match="pretrained: false"):
        medsec.models.create("clipseg", pretrained=True, config=CFG)
    with pytest.raises(medsec.errors.InputError, match="needs a text prompt"):
        medsec.models.create("clipseg", pretrained=False, config=CFG)(torch.rand(1, 3, 32, 32))


def test_checkpoint_round_trip(tmp_path) -> None:
    seg = small("dense")
    path = medsec.models.save_checkpoint(seg, tmp_path / "clipseg.safetensors")
    back = medsec.models.load_checkpoint(path)
    x = torch.rand(1, 3, 32, 32)
    assert back.prompt == "polyp" and torch.allclose(back(x), seg(x), atol=1e-5)
