import dataclasses
import typing

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


#: (override, the start of the error) for values out of their valid range
OUT_OF_RANGE = [
    ("train.eval_interval=0", "'train.eval_interval' must be >= 1, got 0"),
    ("train.log_interval=0", "'train.log_interval' must be >= 1, got 0"),
    ("train.ckpt_interval=-5", "'train.ckpt_interval' must be >= 0, got -5"),
    ("train.max_iters=-1", "'train.max_iters' must be >= 1, got -1"),
    ("train.num_threads=-2", "'train.num_threads' must be >= 0, got -2"),
    ("data.mean=[0.5,0.5]", "'data.mean' must be 3 finite numbers, got [0.5, 0.5]"),
    ("data.std=[0.2,0.0,0.2]", "'data.std' must be 3 numbers, each > 0, got [0.2, 0.0, 0.2]"),
    ("data.std=[0.2,.inf,0.2]", "'data.std' must be 3 numbers, each > 0"),
    ("data.crop_size=0", "'data.crop_size' must be in [1, 8192], got 0"),
    ("data.batch_size=0", "'data.batch_size' must be >= 1, got 0"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("data.num_classes=1", "'data.num_classes' must be >= 2, got 1"),
    ("data.scale_range=[2.0,1.0]", "'data.scale_range' must be 2 numbers, each > 0, the first <= the second"),
    ("data.color_jitter=-0.1", "'data.color_jitter' must be >= 0, got -0.1"),
    ("data.synthetic.max_objects=0", "'data.synthetic.max_objects' must be >= 1, got 0"),
    ("data.synthetic.radius=[0.3,0.1]", "'data.synthetic.radius' must be 2 numbers, each > 0, the first <= the"),
    ("cam.high=1.5", "'cam.high' must be in [0, 1], got 1.5"),
    ("cam.bkg_score=-0.1", "'cam.bkg_score' must be in [0, 1], got -0.1"),
    ("cam.low=0.6", "'cam.low' (0.6) must not exceed 'cam.high' (0.55)"),
    ("cam.scales=[]", "'cam.scales' must be 1 or more numbers, each > 0, got []"),
    ("eval.scales=[1.0,-0.5]", "'eval.scales' must be 1 or more numbers, each > 0, got [1.0, -0.5]"),
    ("model.topk_ratio=0", "'model.topk_ratio' must be in (0, 1], got 0.0"),
    ("model.topk_ratio=1.5", "'model.topk_ratio' must be in (0, 1], got 1.5"),
    ("model.drop_path_rate=1", "'model.drop_path_rate' must be in [0, 1), got 1.0"),
    ("model.stride=[4,2,1]", "'model.stride' must be 4 numbers, each >= 1, got [4, 2, 1]"),
    ("model.stride=[4,0,1,1]", "'model.stride' must be 4 numbers, each >= 1"),
    ("refine.dilations=[1,0]", "'refine.dilations' must be 1 or more numbers, each >= 1"),
    ("refine.num_iter=-1", "'refine.num_iter' must be >= 0, got -1"),
    ("loss.dense_sigma_rgb=0", "'loss.dense_sigma_rgb' must be > 0, got 0.0"),
    ("loss.dense_sigma_xy=-3", "'loss.dense_sigma_xy' must be > 0, got -3.0"),
    ("loss.dense_sigma_xy=.inf", "'loss.dense_sigma_xy' must be a finite number > 0, got inf"),
    ("loss.seg=-0.1", "'loss.seg' must be >= 0, got -0.1"),
    ("loss.er=.nan", "'loss.er' must be a finite number >= 0, got nan"),
    ("loss.scd_samples=0", "'loss.scd_samples' must be >= 1, got 0"),
    ("optim.lr=0", "'optim.lr' must be > 0, got 0.0"),
    ("optim.lr=.nan", "'optim.lr' must be a finite number > 0, got nan"),
    ("optim.betas=[0.9,1.0]", "'optim.betas' must be 2 numbers, each in [0, 1), got [0.9, 1.0]"),
    ("optim.power=-1", "'optim.power' must be >= 0, got -1.0"),
    ("optim.warmup_iters=-1", "'optim.warmup_iters' must be >= 0, got -1"),
    ("seed=-1", "'seed' must be in [0, 4294967295], got -1"),
    ("eval.max_images=0", "'eval.max_images' must be >= 1, got 0"),
    ("eval.batch_size=0", "'eval.batch_size' must be >= 1, got 0"),
    ("eval.resize_long=-1", "'eval.resize_long' must be in [0, 8192], got -1"),
    # formerly torch's raw allocation error, once the run was under way
    ("data.crop_size=100000", "'data.crop_size' must be in [1, 8192], got 100000: a larger image does not fit in "
                              "memory (one image's attention affinity alone holds (side / output stride)⁴ numbers)"),
    ("eval.resize_long=100000", "'eval.resize_long' must be in [0, 8192], got 100000: a larger image"),
    ("data.synthetic.image_size=100000", "'data.synthetic.image_size' must be in [1, 8192], got 100000: a larger"),
]


@pytest.mark.parametrize("override, message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_values_out_of_range_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("synthetic", [override])
    assert str(info.value).startswith(message)


def test_every_way_to_build_a_config_checks_values(tmp_path):
    message = "'train.eval_interval' must be >= 1, got 0"
    with pytest.raises(ConfigError, match=message):
        load_config(None, values={"train.eval_interval": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  eval_interval: 0\n")
    with pytest.raises(ConfigError, match=message):
        load_config(bad)
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"train": {"eval_interval": 0}})
    with pytest.raises(ConfigError, match=message):
        apply(load_config("synthetic"), ["train.eval_interval=0"])
    # a value fixed by a later source is fine: the finished config is checked
    assert load_config(bad, ["train.eval_interval=5"]).train.eval_interval == 5


def test_values_at_the_edge_of_their_range_are_accepted():
    cfg = load_config("synthetic", [
        "train.ckpt_interval=0", "train.num_threads=0", "train.max_iters=1", "train.eval_interval=1",
        "data.num_workers=0", "data.mean=[-1.5, 0.0, 2.0]", "data.scale_range=[0.5, 0.5]", "data.color_jitter=0",
        "model.topk_ratio=1.0", "model.drop_path_rate=0", "cam.low=0.5", "cam.high=0.5", "cam.bkg_score=1",
        "refine.num_iter=0", "loss.stage1_iters=0", "loss.seg=0", "loss.aff_radius=0", "optim.norm_lr_mult=0",
        "optim.warmup_iters=0", "optim.betas=[0.0, 0.999]", "optim.eps=0", "seed=4294967295",
        "eval.max_images=null", "eval.resize_long=0", "eval.num_vis=0", "data.num_classes=2",
    ])
    assert cfg.train.ckpt_interval == 0 and cfg.cam.low == cfg.cam.high == 0.5 and cfg.eval.max_images is None


def test_every_number_of_the_schema_has_a_valid_range():
    from tscd.config import VALID_VALUES

    def numeric_keys(tp, prefix=""):
        for name, hint in typing.get_type_hints(tp).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]  # Optional[X] -> X
            base = args[0] if typing.get_origin(hint) is typing.Union else hint
            if dataclasses.is_dataclass(base):
                yield from numeric_keys(base, f"{prefix}{name}.")
            elif base in (int, float) or (typing.get_origin(base) is list and typing.get_args(base)[0] in (int, float)):
                yield prefix + name

    assert set(numeric_keys(TSCDConfig)) == set(VALID_VALUES)


def test_the_shipped_configs_have_valid_values():
    for path in builtin_config_dir().glob("*.yaml"):
        load_config(path)
