"""The one checkpoint format: every family round-trips exactly, zero rows pack losslessly, earlier
formats stay readable, and a checkpoint is data (loading builds only allow-listed local
architectures; pretrained flags, hub ids, URLs and paths in the metadata are refused before
anything is built)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import medsec.models as M
from medsec.errors import DataError
from medsec.models.checkpoint import FAMILIES, pack_zero_rows, read_metadata, unpack_zero_rows
from medsec.models.clip import SMALL_CONFIGS, hf_clip_model, load_clip, open_clip_model
from medsec.models.medclip import load_medclip, medclip
from medsec.recipes.shipped import SHIPPED_DIR, read_record

pytestmark = pytest.mark.unit

SENTS = ["a dark cell", "a bright cell", "an image of a dark cell"]


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return M.create("small_cnn", num_classes=3, width=8, classes=["x/1", "y", "z"]).eval()


def _rewrite(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    """A copy of checkpoint ``src`` whose metadata ``edit(meta)`` changed (tensors kept)."""
    meta = read_metadata(src)
    meta.pop("source")
    edit(meta)
    save_file(load_file(str(src)), str(dst), metadata={"medsec": json.dumps(meta)})
    return dst


# ------------------------------------------------------------------ round trips, every family
def test_classifier_and_segmenter_round_trip(tmp_path: Path) -> None:
    clf = _classifier()
    path = M.save_checkpoint(clf, tmp_path / "c.safetensors", extra={"note": [1, 2]})
    again = M.load_checkpoint(path)
    x = torch.rand(2, 3, 16, 16)
    assert type(again) is type(clf) and not again.training
    assert torch.equal(again(x), clf(x)) and again.classes == ["x/1", "y", "z"] and again.spec == clf.spec
    meta = read_metadata(path)
    assert (meta["format"], meta["version"], meta["family"]) == ("medsec.checkpoint", 2, "classifier")
    assert meta["arch"]["name"] == "small_cnn" and meta["extra"] == {"note": [1, 2]} == read_record(path)

    torch.manual_seed(0)
    seg = M.create("monai_unet", channels=[4, 8], strides=[2], classes=["bg", "polyp"]).eval()
    back = M.load_checkpoint(M.save_checkpoint(seg, tmp_path / "s.safetensors"))
    assert type(back).__name__ == "Segmenter" and back.classes == ["bg", "polyp"]
    assert torch.equal(back(x), seg(x))


@pytest.mark.parametrize("name", sorted(FAMILIES["mil_head"]))
def test_mil_heads_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    params = {"dim": 16, "heads": 2} if name == "transmil" else {"hidden": 24}
    head = M.create_head(name, 12, 3, **params)
    head.set_feature_stats(torch.rand(12), torch.rand(12) + 0.5)
    back = M.load_checkpoint(M.save_checkpoint(head.eval(), tmp_path / "h.safetensors"))
    bag = torch.randn(7, 12)
    assert type(back) is type(head) and back.arch == head.arch and back.num_classes == 3
    assert torch.equal(back(bag), head(bag)) and torch.equal(back.feat_std, head.feat_std)


def test_clip_families_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    for clip in (open_clip_model(config=SMALL_CONFIGS["ViT-B-32"]), hf_clip_model(config=SMALL_CONFIGS["PLIP"])):
        back = load_clip(M.save_checkpoint(clip, tmp_path / f"{clip.backend}.safetensors"))
        tokens = clip.tokenize(["a basophil", "a platelet"])
        with torch.no_grad():
            assert torch.equal(back.encode_image(x), clip.encode_image(x))
            assert torch.equal(back.encode_text(tokens), clip.encode_text(tokens))
    torch.manual_seed(0)
    m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=SENTS, image_size=16, embed_dim=16).eval()
    back = M.load_checkpoint(M.save_checkpoint(m, tmp_path / "m.safetensors"))
    assert type(back) is type(m)
    with torch.no_grad():
        assert torch.equal(back.encode_text(["a dark cell", "an unseen word"]),
                           m.encode_text(["a dark cell", "an unseen word"]))
        assert torch.equal(back.encode_image(x[:, :, :16, :16]), m.encode_image(x[:, :, :16, :16]))
    with pytest.raises(DataError, match="medclip checkpoint, not a CLIP model"):
        load_clip(tmp_path / "m.safetensors")
    with pytest.raises(DataError, match="clip checkpoint, not a MedCLIP"):
        load_medclip(tmp_path / "hf.safetensors")


def test_zero_rows_pack_losslessly_in_any_family(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=g)
    table[torch.randperm(50, generator=g)[:40]] = 0
    state = {"t": table, "zeros": torch.zeros(6, 4), "dense": torch.randn(5, 3, generator=g), "ids": torch.arange(9)}
    packed, shapes = pack_zero_rows(state)
    assert set(shapes) == {"t", "zeros"} and packed["t.rows"].shape == (10, 8)
    back = unpack_zero_rows(packed, shapes)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    # a classifier whose head is mostly zero rows: stored packed, loaded bit for bit
    clf = _classifier()
    with torch.no_grad():
        clf.net.head.weight[1:] = 0
    path = M.save_checkpoint(clf, tmp_path / "z.safetensors")
    assert "net.head.weight" in read_metadata(path)["zero_rows"] and "net.head.weight.rows" in load_file(str(path))
    assert torch.equal(M.load_checkpoint(path).net.head.weight, clf.net.head.weight)


def test_shipped_checkpoints_are_in_the_current_format() -> None:
    files = sorted(SHIPPED_DIR.glob("*.safetensors"))
    assert files
    families = {read_metadata(p)["family"] for p in files}
    assert families == {"classifier", "segmenter", "clip", "medclip"}
    assert all(read_metadata(p)["source"] == "medsec.checkpoint-v2" for p in files)


# ------------------------------------------------------------------ earlier formats
def test_earlier_formats_stay_readable(tmp_path: Path) -> None:
    """Files written the way medsec wrote them before the one format (classifier key "medsec",
    CLIP key "medsec_clip" with packed rows, MedCLIP keys format/arch/tokenizer/extra, bare MIL
    heads) load to the same outputs."""
    x = torch.rand(2, 3, 16, 16)
    clf = _classifier()
    old = {"arch": clf.arch, "spec": clf.spec.to_dict(), "task": clf.task, "num_classes": 3, "classes": clf.classes,
           "extra": {"test_accuracy": 0.5}}
    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, str(tmp_path / "c.safetensors"),
              metadata={"medsec": json.dumps(old)})
    back = M.load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(back(x), clf(x)) and back.classes == clf.classes
    assert read_record(tmp_path / "c.safetensors") == {"test_accuracy": 0.5}
    assert read_metadata(tmp_path / "c.safetensors")["source"] == "medsec-v1"

    torch.manual_seed(0)
    clip = open_clip_model(config=SMALL_CONFIGS["ViT-B-32"])
    clip.trim_vocabulary(["a basophil"])
    state, rows = pack_zero_rows({k: v.contiguous() for k, v in clip.model.state_dict().items()})
    meta = {"arch": clip.arch, "spec": clip.spec.to_dict(), "extra": {"zero_shot_accuracy": 0.9}, "zero_rows": rows}
    save_file(state, str(tmp_path / "clip.safetensors"), metadata={"medsec_clip": json.dumps(meta)})
    back = M.load_checkpoint(tmp_path / "clip.safetensors")
    tokens = clip.tokenize(["a basophil"])
    with torch.no_grad():
        assert torch.equal(back.encode_text(tokens), clip.encode_text(tokens))
    assert read_record(tmp_path / "clip.safetensors") == {"zero_shot_accuracy": 0.9}

    torch.manual_seed(0)
    m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=SENTS, image_size=16, embed_dim=16).eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"),
              metadata={"format": "medsec-medclip", "arch": json.dumps(m.arch), "tokenizer": m.serialized_tokenizer(),
                        "extra": json.dumps({"cell": "c1"})})
    back = load_medclip(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(back.encode_text(["a dark cell"]), m.encode_text(["a dark cell"]))
    assert read_record(tmp_path / "m.safetensors") == {"cell": "c1"}

    head = M.create_head("abmil", 8).eval()
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    with pytest.raises(DataError, match="load_weights"):
        M.load_checkpoint(tmp_path / "head.safetensors")
    fresh = M.load_weights(tmp_path / "head.safetensors", M.create_head("abmil", 8)).eval()
    bag = torch.rand(5, 8)
    assert torch.equal(fresh(bag), head(bag))


# ------------------------------------------------------------------ a checkpoint is data
@pytest.fixture()
def no_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every builder call of the model and MIL-head registries."""
    from medsec.registry import MIL_HEADS, MODELS

    calls: list[str] = []
    for reg in (MODELS, MIL_HEADS):
        original = reg.create

        def create(name: str, _original=original, **params: object) -> object:  # noqa: ANN001
            calls.append(name)
            return _original(name, **params)

        monkeypatch.setattr(reg, "create", create)
    return calls


def _params(**changes: object):  # noqa: ANN202
    def edit(meta: dict) -> None:
        meta["arch"]["params"].update(changes)

    return edit


@pytest.mark.parametrize(("edit", "field"), [
    (_params(pretrained=True), "arch.params.pretrained"),
    (_params(checkpoint_path="/tmp/weights.pt"), "arch.params.checkpoint_path"),
    (_params(model_kwargs={"pretrained_cfg_overlay": {"file": "x.bin"}}), "arch.params.model_kwargs.pretrained_cfg_overlay"),
    (lambda m: m["arch"].update(name="timm", params={"arch": "hf-hub:MahmoodLab/UNI", "num_classes": 3}),
     "arch.params.arch"),
    (lambda m: m["arch"].update(name="timm", params={"arch": "https://example.org/resnet.json"}), "arch.params.arch"),
    (lambda m: m["arch"].update(name="timm", params={"arch": "../../models/resnet"}), "arch.params.arch"),
    (lambda m: m["arch"].update(name="medsec_bloodmnist"), "arch.name"),
    (lambda m: m["arch"].update(name="monai_unet"), "arch.name"),
    (lambda m: m.update(family="encoder"), "family"),
    (_params(evil=1), "arch.params"),
    (lambda m: m.update(spec={"channels": 3, "std": [0.0, 1.0, 1.0]}), "spec"),
    (lambda m: m.update(version=99), "version"),
    (lambda m: m.update(attributes={"classes": "abc"}), "attributes.classes"),
])
def test_loading_refuses_what_would_be_fetched_or_built(edit, field: str, tmp_path: Path, no_build: list[str]) -> None:  # noqa: ANN001
    good = M.save_checkpoint(_classifier(), tmp_path / "good.safetensors")
    no_build.clear()
    bad = _rewrite(good, tmp_path / "bad.safetensors", edit)
    with pytest.raises(DataError) as info:
        M.load_checkpoint(bad)
    assert str(bad) in str(info.value) and repr(field) in str(info.value)
    assert no_build == [], "nothing is built before the metadata is validated"


@pytest.mark.parametrize(("arch", "field"), [
    ({"name": "open_clip", "params": {"model_id": "hf-hub:wisdomik/QuiltNet-B-32", "pretrained": None}},
     "arch.params.model_id"),
    ({"name": "open_clip", "params": {"model_id": None, "pretrained": "openai"}}, "arch.params.pretrained"),
    ({"name": "open_clip", "params": {"config": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_model_name": "bert"}}}},
     "arch.params.config.text_cfg.hf_config"),
    ({"name": "open_clip", "params": {"image_size": 32}}, "arch.params.config"),
    ({"name": "hf_clip", "params": {"model_id": "vinid/plip"}}, "arch.params.model_id"),
])
def test_clip_checkpoints_name_no_hub_model(arch: dict, field: str, tmp_path: Path, no_build: list[str]) -> None:
    torch.manual_seed(0)
    good = M.save_checkpoint(hf_clip_model(config=SMALL_CONFIGS["PLIP"]), tmp_path / "good.safetensors")
    no_build.clear()
    bad = _rewrite(good, tmp_path / "bad.safetensors", lambda m: m.update(arch=arch))
    with pytest.raises(DataError) as info:
        M.load_checkpoint(bad)
    assert str(bad) in str(info.value) and repr(field) in str(info.value) and no_build == []


def test_builders_that_download_by_default_need_an_explicit_no(tmp_path: Path, no_build: list[str]) -> None:
    from medsec.models.clipseg import SMALL_CONFIG

    seg = M.create("clipseg", pretrained=False, config=SMALL_CONFIG, prompt="polyp")
    good = M.save_checkpoint(seg, tmp_path / "seg.safetensors")
    params = read_metadata(good)["arch"]["params"]
    assert params["pretrained"] is False and "model_id" not in params  # the unused hub id is not stored
    assert M.load_checkpoint(good).prompt == "polyp"
    no_build.clear()
    bad = _rewrite(good, tmp_path / "bad.safetensors", lambda m: m["arch"]["params"].pop("pretrained"))
    with pytest.raises(DataError, match="'arch.params.pretrained' is missing"):
        M.load_checkpoint(bad)
    assert no_build == []
    # a MedCLIP checkpoint carries its tokenizer; without it the builder would need the hub
    torch.manual_seed(0)
    m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=SENTS, image_size=16, embed_dim=16)
    good = M.save_checkpoint(m, tmp_path / "m.safetensors")
    no_build.clear()
    assert "text_model_id" not in read_metadata(good)["arch"]["params"]
    bad = _rewrite(good, tmp_path / "m-bad.safetensors", lambda meta: meta["arch"]["params"].pop("tokenizer_json"))
    with pytest.raises(DataError, match="'arch.params.tokenizer_json' is missing"):
        M.load_checkpoint(bad)
    assert no_build == []


def test_a_hub_model_saves_with_a_warning_and_reloads_through_load_weights(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    clf = _classifier()
    clf.arch = {"name": "timm", "params": {"arch": "hf-hub:org/model", "num_classes": 3}}
    with caplog.at_level("WARNING"):
        path = M.save_checkpoint(clf, tmp_path / "hub.safetensors")
    assert "load_weights" in caplog.text
    with pytest.raises(DataError, match="arch.params.arch"):
        M.load_checkpoint(path)
    mine = M.load_weights(path, M.create("small_cnn", num_classes=3, width=8)).eval()
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(mine(x), clf(x))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        M.load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="safetensors"):
        M.load_checkpoint(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "j.safetensors"), metadata={"medsec": "{not json"})
    with pytest.raises(DataError, match="'medsec' is not valid JSON"):
        M.load_checkpoint(tmp_path / "j.safetensors")
    good = M.save_checkpoint(_classifier(), tmp_path / "good.safetensors")
    state = load_file(str(good))
    state["net.head.weight"] = torch.zeros(5, 5)
    meta = read_metadata(good)
    meta.pop("source")
    save_file(state, str(tmp_path / "shape.safetensors"), metadata={"medsec": json.dumps(meta)})
    with pytest.raises(DataError, match="do not match the architecture"):
        M.load_checkpoint(tmp_path / "shape.safetensors")
    with pytest.raises(DataError, match="cannot checkpoint"):
        M.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "lin.safetensors")


def test_loading_a_mil_head_does_not_import_the_wsi_package(tmp_path: Path) -> None:
    """MIL heads are model units: models/ never reaches up into wsi/ (GUIDE: data flows one way)."""
    import os
    import subprocess
    import sys

    path = M.save_checkpoint(M.create_head("abmil", 8), tmp_path / "head.safetensors")
    code = ("import sys, medsec.models as M; h = M.load_checkpoint(sys.argv[1]); "
            "assert type(h).__name__ == 'GatedAttentionMIL'; "
            "print(sorted(m for m in sys.modules if m.startswith('medsec.wsi')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(M.__file__).parents[2])})
    assert out.stdout.strip() == "[]", out.stdout
