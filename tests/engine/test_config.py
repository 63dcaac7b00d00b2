import dataclasses

import pytest
import yaml

from tscd.config import ConfigError, TSCDConfig, apply, builtin_config_dir, config_from_dict, load_config, to_dict

LITERALS = ["runs/my data #1", "yes", "2024-01-01", "1:30", "null", "${oc.env:HOME}"]


def test_builtin_configs_load_and_overrides_parse_yaml():
    assert builtin_config_dir().parent.name == "tscd"
    for name in ("synthetic", "voc", "coco", "folder"):
        assert load_config(name).data.name == name
    cfg = load_config("synthetic", ["optim.lr=3e-4", "model.stride=[4,2,2,1]", "refine.mode=par",
                                    "data.root=/x/y", "eval.max_images=null"])
    assert cfg.optim.lr == 3e-4 and cfg.model.stride == [4, 2, 2, 1] and cfg.refine.mode == "par"
    assert cfg.data.root == "/x/y" and cfg.eval.max_images is None
    assert load_config(None).loss.dense_weight == pytest.approx(1e-7 * 0.58)
    assert TSCDConfig().optim.lr == 6e-5  # defaults are never mutated
    assert load_config(None) == TSCDConfig()


def test_crf_preset_defaults_to_the_published_protocol_and_is_a_string():
    for name in ("synthetic", "voc", "coco", "folder"):
        assert load_config(name).eval.crf_preset == "afa"
    assert load_config("voc", ["eval.crf_preset=excel"]).eval.crf_preset == "excel"
    with pytest.raises(ConfigError, match="'eval.crf_preset' expects a str"):
        load_config("voc", values={"eval.crf_preset": 3})


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="^override: unknown config key 'optim.lrr'$"):
        load_config("synthetic", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'nosuch'"):
        load_config(None, ["nosuch.key=1"])
    with pytest.raises(ConfigError, match="unknown config key 'seed.x'"):
        load_config(None, ["seed.x=1"])
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
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="value: unknown config key 'data.rooot'"):
        load_config(None, values={"data.rooot": "x"})


def test_values_are_type_checked_and_exponents_are_floats():
    cfg = load_config(None, ["optim.lr=2e-4", "optim.warmup_iters=10", "optim.power=1"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.power, float)
    with pytest.raises(ConfigError, match="'optim.lr' expects a float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="'train.bf16' expects a bool"):
        load_config(None, ["train.bf16=1"])
    with pytest.raises(ConfigError, match="'model.stride' expects a list"):
        load_config(None, ["model.stride=4"])
    with pytest.raises(ConfigError, match="'model.stride' expects a int, got '2'"):
        load_config(None, ["model.stride=[4, '2']"])
    with pytest.raises(ConfigError, match="'train.max_iters' expects a int, got True"):
        load_config(None, ["train.max_iters=true"])
    with pytest.raises(ConfigError, match="'optim.lr' expects a float, got {'a': 1}"):
        load_config(None, ["optim.lr={a: 1}"])
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(None, ["optim=3"])


def test_values_are_assigned_literally_and_type_checked():
    cfg = load_config("synthetic", values={"data.root": "runs/my data #1", "train.max_iters": 5,
                                           "eval.scales": (1.0, 0.5), "optim.lr": 1})
    assert cfg.data.root == "runs/my data #1" and cfg.train.max_iters == 5
    assert cfg.eval.scales == [1.0, 0.5] and isinstance(cfg.optim.lr, float)
    for value in LITERALS:
        root = load_config(None, values={"data.root": value}).data.root
        assert type(root) is str and root == value
    for key, value in {"optim.lr": "3e-4", "train.max_iters": "5", "train.bf16": 1, "eval.max_images": True,
                       "data.root": 5, "data.name": None, "eval.scales": [1.0, "x"]}.items():
        with pytest.raises(ConfigError, match=f"^value: '{key}' expects a "):
            load_config(None, values={key: value})


def test_string_overrides_are_literal():
    for value in LITERALS:
        cfg = load_config(None, [f"data.root={value}", f"data.name={value}"])
        assert type(cfg.data.root) is str and cfg.data.root == value and cfg.data.name == value
    cfg = load_config(None, ["data.root=", "data.train_split="])
    assert cfg.data.root is None and cfg.data.train_split == ""


def test_plain_dataclass_round_trip_and_apply():
    cfg = load_config("voc", ["data.root=${x} #1"])
    assert type(cfg) is TSCDConfig and type(cfg.model.stride) is list and type(cfg.data.synthetic.radius) is list
    tree = to_dict(cfg)
    assert yaml.safe_load(yaml.safe_dump(tree)) == tree and config_from_dict(tree) == cfg
    assert config_from_dict({"optim": {"lr": 1e-3}}).optim.lr == 1e-3  # filled up with the defaults
    before = to_dict(cfg)
    new = apply(cfg, ["optim.lr=1e-3"], {"eval.max_images": 2})
    assert new.optim.lr == 1e-3 and new.eval.max_images == 2 and to_dict(cfg) == before
    cfg.train = dataclasses.replace(cfg.train, max_iters=7)
    cfg.eval.scales = (1.0, 0.5)
    assert apply(cfg).train.max_iters == 7 and to_dict(cfg)["eval"]["scales"] == [1.0, 0.5]
