import dataclasses

import pytest

from hydra_umm.config import Config, ConfigError, apply_overrides, from_dict, load_config, preset_names, to_dict


def test_presets_load_and_paper_is_internvit_300m():
    assert {"tiny", "paper", "paper-1.5b", "paper-7b"} <= set(preset_names())
    paper = load_config("paper")
    tok = paper.tokenizer
    assert (tok.depth, tok.width, tok.num_heads, tok.patch_size, tok.image_size) == (24, 1024, 16, 14, 448)
    assert paper.llm.hidden_size == 1536
    assert load_config("paper-7b").llm.hidden_size == 3584
    assert load_config("paper-7b").tokenizer.width == 1024  # inherited through `base:`


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


def test_unknown_preset_and_unknown_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("nope")
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
