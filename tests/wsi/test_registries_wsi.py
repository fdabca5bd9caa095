"""The whole-slide units are listable by name: ENCODERS and MIL_HEADS hold every tile
encoder and MIL head without the caller importing medsec.wsi first, and the attack,
objective and detector registries hold the label-free attacks, the feature deviation and
the embedding outlier detector."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_wsi_registries_list_every_unit_in_a_fresh_process() -> None:
    code = (
        "import json, sys\n"
        "from medsec.registry import ENCODERS, MIL_HEADS\n"
        "before = 'medsec.wsi' in sys.modules\n"
        "out = {'before': before, 'encoders': ENCODERS.list(), 'heads': MIL_HEADS.list(),\n"
        "       'has_uni': 'uni' in ENCODERS, 'n_heads': len(MIL_HEADS)}\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] is False  # nothing imported the wsi package before the lookup
    assert set(out["encoders"]) == {"timm", "open_clip", "uni", "virchow", "prov-gigapath", "resnet50_trunc",
                                    "medsec_bloodmnist"}
    assert set(out["heads"]) == {"abmil", "transmil", "mean", "max"} and out["n_heads"] == 4
    assert out["has_uni"]


def test_registries_match_the_wsi_views() -> None:
    import medsec.attacks
    import medsec.defenses
    import medsec.objectives
    from medsec.registry import DETECTORS, ENCODERS, MIL_HEADS, OBJECTIVES
    from medsec.wsi import list_encoders
    from medsec.wsi.mil import create_head

    assert list_encoders() == ENCODERS.list()
    for name in MIL_HEADS.list():
        assert create_head(name, 8).__class__ is MIL_HEADS.get(name)
    assert "feature_deviation" in OBJECTIVES and "embedding_outlier" in DETECTORS
    assert {"fgsm_rs", "feature_cw", "feature_deepfool"} <= set(medsec.attacks.list())
    with pytest.raises(medsec.errors.RegistryError, match="Did you mean 'abmil'"):
        MIL_HEADS.get("abmill")
