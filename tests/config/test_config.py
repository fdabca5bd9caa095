"""Config loading: eps fractions, overrides, unknown keys with suggestions, registry checks."""

from __future__ import annotations

import pytest

from medsec.config import apply_overrides, load_config, parse_number, validate_config
from medsec.errors import ConfigError

pytestmark = pytest.mark.unit

BASE = {
    "name": "t",
    "data": {"name": "synthetic_he", "params": {"n": 64, "size": 16}},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "attacks": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 3}}],
    "threat": {"eps": ["1/255", "8/255"]},
}


def test_parse_number_fractions_and_rejects_code():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(" 0.5 ") == 0.5
    assert parse_number(3) == 3.0
    assert parse_number("1e-3") == 1e-3
    for bad in ("__import__('os')", "8/0", "1/2/3", True, None):
        with pytest.raises(ValueError):
            parse_number(bad)


def test_eps_fraction_in_config():
    cfg = validate_config(BASE)
    assert cfg.threat.eps == pytest.approx([1 / 255, 8 / 255])


def test_fractions_in_attack_params_are_numbers():
    raw = {**BASE, "attacks": [{"name": "pgd", "params": {"steps": 10, "step_size": "2/255"}},
                               {"name": "fgsm", "params": {"loss": "ce"}}]}
    cfg = validate_config(raw)
    assert cfg.attacks[0].params["step_size"] == pytest.approx(2 / 255)
    assert cfg.attacks[1].params["loss"] == "ce"  # other strings stay strings


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({**BASE, "attaks": []}, "Did you mean 'attacks'"),
        ({**BASE, "eval": {"sample_limt": 5}}, "Did you mean 'sample_limit'"),
        ({**BASE, "attacks": [{"name": "pgd", "parms": {}}]}, "Did you mean 'params'"),
        ({**BASE, "attacks": [{"name": "pgdd"}]}, "Did you mean 'pgd'"),
        ({**BASE, "attacks": [{"name": "pgd", "params": {"step": 3}}]}, "Did you mean 'steps'"),
        ({**BASE, "data": {"name": "synthetic_hee"}}, "Did you mean 'synthetic_he'"),
        ({**BASE, "threat": {"eps": [-1]}}, "eps must be >= 0"),
        ({**BASE, "threat": {"norm": "l3"}}, "threat.norm"),
        ({**BASE, "threat": {"targeted": True}}, "needs `target`"),
        ({**BASE, "attacks": []}, "attacks"),
        ({k: v for k, v in BASE.items() if k != "data"}, "missing required key 'data'"),
    ],
)
def test_invalid_configs_raise_one_clear_line(raw, fragment):
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    msg = str(err.value)
    assert fragment in msg, msg
    assert "\n" not in msg


def test_overrides_apply_and_type():
    raw = apply_overrides(BASE, ["seed=3", "attacks.1.params.steps=7", "threat.eps=[2/255]", "eval.sample_limit=50"])
    cfg = validate_config(raw)
    assert cfg.seed == 3 and cfg.attacks[1].params["steps"] == 7 and cfg.eval.sample_limit == 50
    assert cfg.threat.eps == pytest.approx([2 / 255])
    assert BASE["attacks"][1]["params"]["steps"] == 3  # the input dict is not modified


@pytest.mark.parametrize("bad", ["noequals", "attacks.9.name=x", "name.sub=1", "=3"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        apply_overrides(BASE, [bad])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
