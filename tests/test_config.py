import dataclasses
import re

import pytest

from hydra_umm.config import Config, ConfigError, apply_overrides, from_dict, load_config, preset_names, to_dict
from hydra_umm.train.config import TrainConfig


def test_presets_load_and_paper_is_internvit_300m():
    assert {"tiny", "paper", "paper-1.5b", "paper-7b"} <= set(preset_names())
    paper = load_config("paper")
    tok = paper.tokenizer
    assert (tok.depth, tok.width, tok.num_heads, tok.patch_size, tok.image_size) == (24, 1024, 16, 14, 448)
    assert paper.llm.hidden_size == 1536
    assert load_config("paper-7b").llm.hidden_size == 3584
    assert load_config("paper-7b").tokenizer.width == 1024  # inherited through `base:`
    for name in preset_names():
        load_config(name)  # every preset passes the value checks


def test_overrides_are_typed():
    cfg = load_config("tiny", ["tokenizer.gen_depth=2", "tokenizer.lambda_kl=1e-4", "llm.path=/models/q",
                               "tokenizer.distill_layers=[0,3]", "tokenizer.layer_scale=null", "seed=7"])
    assert cfg.tokenizer.gen_depth == 2 and isinstance(cfg.tokenizer.lambda_kl, float)
    assert cfg.tokenizer.lambda_kl == pytest.approx(1e-4)
    assert cfg.llm.path == "/models/q" and cfg.tokenizer.distill_layers == [0, 3]
    assert cfg.tokenizer.layer_scale is None and cfg.seed == 7
    assert apply_overrides(cfg, ["llm.path=/models/a=b"]).llm.path == "/models/a=b"  # split at the first "="


@pytest.mark.parametrize(
    "override, message",
    [
        ("tokenizer.foo=1", "valid keys here: tokenizer.image_size"),
        ("bogus=1", "valid keys here: name, seed, data, stage, init, tokenizer, xtok, llm, umm, harmon, train"),
        ("tokenizer.gen_depth=abc", "expected int"),
        ("seed=true", "expected int"),  # a bool is no int
        ("tokenizer=3", "is a section"),
        ("novalue", "key=value"),
        ("tokenizer.layer_scale=abc", r"fits none of .*\(tokenizer.layer_scale: expected float"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("tiny"), [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("tokenizer.num_heads=5", r"tokenizer.num_heads must be a divisor of tokenizer.width = 128, got 5"),
        ("tokenizer.decoder_width=90", "tokenizer.decoder_heads must be a divisor of tokenizer.decoder_width = 90"),
        ("llm.hidden_size=90", "llm.num_heads must be a divisor of llm.hidden_size = 90"),
        ("llm.num_kv_heads=3", "llm.num_kv_heads must be a divisor of llm.num_heads = 4"),
        ("umm.head_heads=0", "umm.head_heads must be a divisor of umm.head_width = 128, got 0"),
        ("harmon.encoder_heads=3", "harmon.encoder_heads must be a divisor of harmon.encoder_width"),
        ("harmon.decoder_width=130", "harmon.decoder_heads must be a divisor of harmon.decoder_width"),
        ("tokenizer.image_mean=[0.5]", r"tokenizer.image_mean must be 3 numbers \(R, G, B\), got \[0.5\]"),
        ("tokenizer.image_std=[0.2,0.2,0.2,0.2]", "tokenizer.image_std must be 3 numbers > 0"),
        ("tokenizer.image_std=[0.2,0,0.2]", "tokenizer.image_std must be 3 numbers > 0"),
        ("train.betas=[0.9]", r"train.betas must be two numbers in \[0, 1\), got \[0.9\]"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.grad_clip=.nan", "train.grad_clip must be >= 0, got nan"),
        ("seed=-1", "seed must be >= 0, got -1"),
        ("train.lr.default=-1", "train.lr.default must be a finite number > 0, got -1.0"),
        ("train.lr.default=.nan", "train.lr.default must be a finite number > 0, got nan"),
        ("train.lr.llm=.inf", "train.lr.llm must be a finite number > 0, got inf"),
        ("train.lr.decoder=0", "train.lr.decoder must be a finite number > 0, got 0.0"),
        ("umm.caption_dropout=1.5", r"umm.caption_dropout must be in \[0, 1\], got 1.5"),
        ("umm.source_dropout=-0.1", r"umm.source_dropout must be in \[0, 1\], got -0.1"),
        ("harmon.caption_dropout=2", r"harmon.caption_dropout must be in \[0, 1\], got 2.0"),
        ("harmon.dropout=-1", r"harmon.dropout must be in \[0, 1\]"),
        ("umm.max_text_len=0", "umm.max_text_len must be >= 1, got 0"),
        ("umm.flow.shift=0", "umm.flow.shift must be a finite number > 0, got 0.0"),
        ("tokenizer.flow.shift=-2", "tokenizer.flow.shift must be a finite number > 0"),
        ("tokenizer.flow.sampler=bogus", "tokenizer.flow.sampler must be one of euler, heun, got 'bogus'"),
        ("umm.flow.sampler=bogus", "umm.flow.sampler must be one of euler, heun, got 'bogus'"),
        ("umm.flow.t_sampling=normal", "umm.flow.t_sampling must be one of logit_normal, uniform, got 'normal'"),
        ("tokenizer.flow.steps=0", "tokenizer.flow.steps must be >= 1, got 0"),
        ("train.out_dir=", "train.out_dir must be a folder \\(not empty\\), got ''"),
    ],
)
def test_values_the_model_code_cannot_use_are_refused_on_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("tiny"), [override])


def test_values_are_checked_after_all_overrides_and_in_a_bare_train_config():
    cfg = load_config("tiny", ["tokenizer.width=96", "tokenizer.num_heads=3", "umm.caption_dropout=1"])
    assert (cfg.tokenizer.width, cfg.tokenizer.num_heads, cfg.umm.caption_dropout) == (96, 3, 1.0)
    with pytest.raises(ConfigError, match="train.betas must be two numbers"):
        apply_overrides(TrainConfig(), ["betas=[0.9, 0.95, 0.99]"])


def test_every_flow_name_the_config_allows_is_implemented():
    import torch

    from hydra_umm import config, flow

    for kind in config.T_SAMPLINGS:
        assert flow.sample_t(4, kind).shape == (4,)
    for sampler in config.SAMPLERS:
        assert flow.sample(lambda x, t: torch.ones_like(x), torch.zeros(1, 2), 2, sampler).allclose(torch.ones(1, 2))


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  steps: [1,\n", r"bad.yaml is not valid YAML: .* \(line 3, column 1\)$"),
        ("- tokenizer\n- llm\n", "bad.yaml must hold a mapping of config keys at its top level, got list"),
        ("3\n", "bad.yaml must hold a mapping of config keys at its top level, got int"),
    ],
)
def test_a_config_file_that_is_no_yaml_mapping_is_named(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "run.yaml").write_text("base: bad.yaml\n")  # also as the base of another file
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "run.yaml")


def test_a_json_config_that_is_no_json_mapping_is_named(tmp_path):
    (tmp_path / "c.json").write_text('{"seed": 1,')
    with pytest.raises(ConfigError, match="c.json is not valid JSON: "):
        load_config(tmp_path / "c.json")
    (tmp_path / "c.json").write_text("[1]")
    with pytest.raises(ConfigError, match="c.json must hold a mapping of config keys at its top level, got list"):
        load_config(tmp_path / "c.json")


@pytest.mark.parametrize("override", ["train.steps=[1,", "train.ratios={a", "name=@x"])
def test_an_override_that_is_no_yaml_is_named(override):
    with pytest.raises(ConfigError, match=f"^override '{re.escape(override)}' is not valid YAML: .*column"):
        load_config("tiny", [override])


def test_unknown_preset_and_unknown_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("nope")
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'none.yaml'}"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="train.warmup must be <= train.steps = 4, got 100"):
        load_config("tiny", ["train.steps=4", "train.warmup=100"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="tokenizer.widht"):
        load_config(bad)


def test_a_yaml_base_is_found_beside_its_file_and_a_cycle_is_refused(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "base.yaml").write_text("base: tiny\nllm:\n  num_layers: 3\n")
    (tmp_path / "mine" / "run.yaml").write_text("base: base.yaml\nseed: 5\n")
    monkeypatch.chdir(tmp_path)  # the base is read beside run.yaml, not from the working folder
    cfg = load_config(tmp_path / "mine" / "run.yaml")
    assert (cfg.seed, cfg.llm.num_layers, cfg.tokenizer.image_size) == (5, 3, 64)
    (tmp_path / "mine" / "base.yaml").write_text("base: run.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "mine" / "run.yaml")


def test_dict_round_trip():
    cfg = load_config("tiny")
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_a_continued_run_adopts_only_the_loss_and_sampling_keys():
    from hydra_umm.config import RUN_KEYS, adopt_run_keys

    saved = load_config("tiny").umm
    run = load_config("paper", ["umm.lambda_flow=3", "umm.flow.steps=7"]).umm
    assert saved.head_width != run.head_width
    assert adopt_run_keys(saved, run) is saved
    assert (saved.lambda_flow, saved.flow.steps, saved.head_width) == (3.0, 7, load_config("tiny").umm.head_width)
    assert saved.flow is not run.flow  # copied, not shared
    for section, keys in RUN_KEYS.items():
        assert set(keys) < {f.name for f in dataclasses.fields(section)}, section.__name__
    with pytest.raises(TypeError, match="UMMConfig"):
        adopt_run_keys(saved, load_config("tiny").tokenizer)
