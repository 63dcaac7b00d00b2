import pytest

from tscd.config import DEFAULTS, ConfigError, load_config


def test_builtin_configs_load_and_overrides_parse_yaml():
    for name in ("synthetic", "voc", "coco"):
        assert load_config(name).data.name == name
    cfg = load_config("synthetic", ["optim.lr=3e-4", "model.stride=[4,2,2,1]", "refine.mode=par",
                                    "data.root=/x/y", "eval.max_images=null"])
    assert cfg.optim.lr == 3e-4 and cfg.model.stride == [4, 2, 2, 1] and cfg.refine.mode == "par"
    assert cfg.data.root == "/x/y" and cfg.eval.max_images is None
    assert load_config(None).loss.dense_weight == pytest.approx(1e-7 * 0.58)
    assert DEFAULTS["optim"]["lr"] == 6e-5  # defaults are never mutated


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config("synthetic", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'nosuch'"):
        load_config(None, ["nosuch.key=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: mit_b0\n  stripe: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.stripe'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_values_are_type_checked_and_exponents_are_floats():
    cfg = load_config(None, ["optim.lr=2e-4", "optim.warmup_iters=10", "optim.power=1"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.power, float)
    with pytest.raises(ConfigError, match="'optim.lr' expects a float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="'train.bf16' expects a bool"):
        load_config(None, ["train.bf16=1"])
    with pytest.raises(ConfigError, match="'model.stride' expects a list"):
        load_config(None, ["model.stride=4"])
