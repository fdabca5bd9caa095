"""CoOp prompt learning, the feature cache, BAPLe and the prompt-backdoor harness.

Unit tests use a small random-weight CLIP (the ViT-B-32 architecture from a small config);
the effect test uses the CLIP-style model medsec pretrains on BloodMNIST captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsec.backdoors.baple import PAPER_DEFAULTS, BapleSettings, BapleTrigger, baple, patch_trigger, scaled_patch
from medsec.data import ImageDataset
from medsec.errors import ConfigError, InputError
from medsec.models.clip import SMALL_CONFIGS, open_clip_model
from medsec.training.coop import PromptLearner, train_coop

pytestmark = pytest.mark.unit

NAMES = ["basophil", "eosinophil", "platelet"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return open_clip_model(config=SMALL_CONFIGS["ViT-B-32"])


@pytest.fixture(scope="module")
def toy() -> ImageDataset:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(8)
    images = (torch.rand(24, 3, 28, 28, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) * 0.25).clamp(0, 1)
    return ImageDataset(images, labels, NAMES, name="toy")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_prompt_learning_updates_only_ctx(clip, toy) -> None:
    """CoOp and BAPLe change the context (and delta) only: both encoders stay bit-identical."""
    before = _state(clip)
    g = torch.Generator().manual_seed(0)
    prompt = PromptLearner(clip, NAMES, n_ctx=16, generator=g)
    assert [n for n, p in prompt.named_parameters()] == ["ctx"] and prompt.ctx.shape == (16, 32)
    ctx0 = prompt.ctx.detach().clone()
    train_coop(clip, prompt, toy.images, toy.labels, epochs=3, batch_size=8, lr=0.02, warmup_epochs=1, generator=g)
    assert not torch.equal(prompt.ctx.detach(), ctx0)
    settings = BapleSettings.paper(epochs=3, batch_size=8, rate=0.2, ctx_init="random")
    out = baple(clip, toy, NAMES, target=0, settings=settings, seed=0)
    assert float(out["trigger"].delta.detach().abs().max()) <= settings.eps + 1e-7
    after = _state(clip)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in clip.parameters())


def test_feature_cache_matches_naive_loop(clip, toy) -> None:
    """Cached features give the same prompt and trigger as re-encoding every image every step."""
    settings = BapleSettings.paper(epochs=3, batch_size=8, rate=0.2, ctx_init="random")
    cached = baple(clip, toy, NAMES, target=1, settings=settings, seed=3, cache=True)
    naive = baple(clip, toy, NAMES, target=1, settings=settings, seed=3, cache=False)
    assert torch.allclose(cached["prompt"].ctx, naive["prompt"].ctx, atol=1e-5)
    assert torch.allclose(cached["trigger"].delta, naive["trigger"].delta, atol=1e-6)
    feats = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    assert torch.allclose(cached["prompt"].logits(feats), naive["prompt"].logits(feats), atol=1e-4)
    # the cached loop encodes each clean image once, the poisoned ones at every step
    n, n_p = len(toy), len(cached["poisoned"].poison_indices)
    assert cached["result"].images_encoded == (n - n_p) + 3 * n_p
    assert naive["result"].images_encoded == 3 * n


def test_baple_trigger_orders_and_bound() -> None:
    patch = patch_trigger(28)
    assert (patch.size, patch.margin) == (3, 2) and scaled_patch(224) == (24, 15)
    x = torch.rand(4, 3, 28, 28)
    params = patch.sample_params(x.shape, torch.Generator().manual_seed(0))
    xp = patch.apply(x, params)
    mask = patch.mask(x.shape, params)
    g = torch.Generator().manual_seed(0)
    for order in ("noise_then_patch", "patch_then_noise"):
        trig = BapleTrigger((3, 28, 28), mask, eps=8 / 255, order=order, generator=g)
        trig.delta.grad = torch.randn(3, 28, 28)
        for _ in range(5):
            trig.step()
        out = trig.apply(xp)
        assert float(trig.delta.abs().max()) <= 8 / 255 + 1e-7
        assert float((out - xp).abs().max()) <= 8 / 255 + 1e-6
        on_patch = (out - xp)[:, :, mask]
        if order == "noise_then_patch":  # (x + delta) with the patch pasted on top: the patch is intact
            assert float(on_patch.abs().max()) == 0.0
        else:
            assert float(on_patch.abs().max()) > 0.0


def test_bad_settings_and_inputs(clip, toy) -> None:
    with pytest.raises(InputError, match="order"):
        BapleSettings(order="both")
    with pytest.raises(InputError, match="ctx_init"):
        BapleSettings(ctx_init="zeros")
    with pytest.raises(InputError, match="rate"):
        BapleSettings(rate=0.0)
    with pytest.raises(InputError, match="warmup_epochs"):
        BapleSettings(epochs=1, warmup_epochs=1)
    with pytest.raises(InputError, match="clean_ctx"):
        baple(clip, toy, NAMES, target=0, settings=BapleSettings.paper(epochs=2))
    with pytest.raises(InputError, match="n_ctx"):
        PromptLearner(clip, NAMES, n_ctx=0)
    with pytest.raises(ConfigError, match="do not fit"):
        PromptLearner(clip, ["a very long class name " * 4], n_ctx=16)
    with pytest.raises(InputError, match="init context must have shape"):
        PromptLearner(clip, NAMES, init=torch.zeros(4, 32))
    prompt = PromptLearner(clip, NAMES)
    with pytest.raises(InputError, match="class indices"):
        train_coop(clip, prompt, toy.images, toy.labels + 5, epochs=2)
    with pytest.raises(InputError, match="must match"):
        train_coop(clip, prompt, toy.images, toy.labels[:3], epochs=2)
    from medsec.backdoors.prompt_harness import Harness

    h = Harness(clip, toy, toy, NAMES, BapleSettings.paper(epochs=2, batch_size=8, rate=0.2))
    with pytest.raises(InputError, match="unknown method 'bapel'.*'baple'"):
        h.run("bapel", 0)
    with pytest.raises(InputError, match="needs a target"):
        h.run("badnets_pl")
    with pytest.raises(InputError, match="class names"):
        Harness(clip, toy, toy, NAMES[:2])


def test_config_rejects_bad_keys() -> None:
    from medsec.config.loader import validate_config

    cfg = validate_config({"kind": "prompt_backdoor", "targets": [0, 2], "baple": {"eps": "8/255", "epochs": 5}})
    assert cfg.baple.eps == pytest.approx(8 / 255) and cfg.targets == [0, 2]
    with pytest.raises(ConfigError, match="epoch"):
        validate_config({"kind": "prompt_backdoor", "baple": {"epoch": 5}})
    with pytest.raises(ConfigError, match="bapel"):
        validate_config({"kind": "prompt_backdoor", "methods": ["bapel"]})
    assert PAPER_DEFAULTS.shots == 32 and PAPER_DEFAULTS.rate == 0.05 and PAPER_DEFAULTS.lr == 0.02


# ---------------------------------------------------------------------- effect on real data
@pytest.fixture(scope="module")
def blood_harness(bloodmnist_clip, bloodmnist_root):
    import medsec.data
    from medsec.backdoors.prompt_harness import Harness, few_shot
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES

    clip, _ = bloodmnist_clip
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(bloodmnist_root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))
    test = test.take(1000, torch.Generator().manual_seed(0))
    fewshot = few_shot(train, 32, torch.Generator().manual_seed(0))
    settings = BapleSettings.paper(epochs=EFFECT_EPOCHS)
    return Harness(clip, fewshot, test, list(BLOOD_CLASS_NAMES), settings, seed=0)


EFFECT_EPOCHS = 20
EFFECT_TARGETS = (0, 5)


@pytest.mark.effect
def test_baple_backdoors_the_pretrained_clip(blood_harness, bloodmnist_clip) -> None:
    """BAPLe on the medsec-pretrained BloodMNIST CLIP (CNN image tower; 32 shots, 5% poison,
    eps 8/255, 20 epochs), targets 0 and 5.

    Measured (1,000 test images, the same cells as configs/bloodmnist_baple.yaml with 20
    epochs): Clean PL CA 0.920; BAPLe CA 0.914 / 0.919, BA 0.482 / 0.586 (mean 0.534);
    BadNets-PL BA 0.083 / 0.117. The issue's target (BA >= 0.90) is not reached: even a universal
    8/255 delta optimised on all 256 few-shot images with the prompt fixed stays below 0.8 on
    these 28 px models (docs/baple.md). Asserted, with margin for a CI retrain of the model:
    mean BA >= 0.38, BAPLe's CA within 3 points of Clean PL, and BA at least 0.20 above
    BadNets-PL at the same poison rate.
    """
    _, meta = bloodmnist_clip
    clean = blood_harness.run("clean_pl")
    rows = {m: [blood_harness.run(m, t) for t in EFFECT_TARGETS] for m in ("baple", "badnets_pl")}
    mean = {m: {k: sum(r[k] for r in rs) / len(rs) for k in ("clean_accuracy", "backdoor_accuracy")}
            for m, rs in rows.items()}
    print(json.dumps({"zero_shot": meta["zero_shot_accuracy"], "clean_pl": clean["clean_accuracy"], **mean}))
    assert clean["clean_accuracy"] >= 0.85
    assert mean["baple"]["backdoor_accuracy"] >= 0.38
    assert mean["baple"]["clean_accuracy"] >= clean["clean_accuracy"] - 0.03
    assert mean["baple"]["backdoor_accuracy"] >= mean["badnets_pl"]["backdoor_accuracy"] + 0.20


@pytest.mark.effect
def test_prompt_backdoor_kind_runs_and_resumes(tmp_path: Path, bloodmnist_clip, bloodmnist_root, monkeypatch) -> None:
    from medsec.config.loader import validate_config
    from medsec.runs import run as run_experiment

    monkeypatch.setenv("MEDSEC_DATA", str(Path(bloodmnist_root).parent))
    cfg = validate_config({"kind": "prompt_backdoor", "name": "tiny", "methods": ["baple", "badnets_ft"],
                           "targets": [1], "data": {"test_size": 64},
                           "baple": {"shots": 4, "epochs": 2, "rate": 0.1}, "finetune": {"epochs": 1}})
    res = run_experiment(cfg, tmp_path)
    assert res["status"] == "complete" and res["kind"] == "prompt_backdoor"
    assert list(res["cells"]) == ["clean_pl", "badnets_ft-t1", "baple-t1"]
    assert set(res["table"]) == {"clean_pl", "badnets_ft", "baple"}
    html = (tmp_path / "report.html").read_text()
    assert "BAPLe" in html and "CA / BA" in html and "data:image/png" in html
    assert (tmp_path / "examples.npz").is_file() and (tmp_path / "report.md").is_file()

    from medsec.backdoors import prompt_harness

    def boom(*a, **k):
        raise AssertionError("a finished cell was retrained")

    monkeypatch.setattr(prompt_harness.Harness, "run", boom)
    again = run_experiment(cfg, tmp_path)
    assert [c["clean_accuracy"] for c in again["cells"].values()] == [c["clean_accuracy"] for c in res["cells"].values()]
