"""A saved HarmonModel opens through load_pipeline and works in `hydra-umm generate` / `reconstruct`."""

from pathlib import Path

import pytest
from PIL import Image

import torch

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.inference import HarmonPipeline, HydraPipeline, load_pipeline
from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer


@pytest.fixture(scope="module")
def harmon_dir(tmp_path_factory) -> Path:
    """A tiny random HarmonModel (32 px, 2 masked-autoregressive steps) saved with save_pretrained."""
    torch.manual_seed(0)
    cfg = load_config("harmon-tiny", ["harmon.image_size=32", "harmon.mar_steps=2", "harmon.sampling_steps=5"])
    directory = tmp_path_factory.mktemp("harmon")
    HarmonModel(cfg, train_text_tokenizer(["a red square", "a blue square"] * 8, cfg.llm.vocab_size)).save_pretrained(directory)
    return directory


def test_load_pipeline_opens_harmon(harmon_dir: Path) -> None:
    pipe = load_pipeline(harmon_dir)
    assert isinstance(pipe, HarmonPipeline) and isinstance(pipe, HydraPipeline)
    (image,) = pipe.generate(["a red square"], steps=2)
    assert image.size == (32, 32)


def test_cli_generate_and_reconstruct_harmon(harmon_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.png"
    main(["generate", "--model", str(harmon_dir), "--prompt", "a red square", "--out", str(out), "--steps", "2"])
    assert Image.open(out).size == (32, 32)
    source, recon = tmp_path / "in.png", tmp_path / "recon.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(source)
    main(["reconstruct", "--model", str(harmon_dir), "--image", str(source), "--out", str(recon)])
    assert Image.open(recon).size == (32, 32)


def test_cli_generate_rejects_harmon_sampler(harmon_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(harmon_dir), "--prompt", "a red square",
              "--out", str(tmp_path / "x.png"), "--steps", "2", "--sampler", "euler"])
    assert "no sampler 'euler'" in capsys.readouterr().err


def test_cli_report_and_geneval_writer_on_harmon(harmon_dir: Path, tmp_path: Path) -> None:
    from hydra_umm.data.shapes import make_dataset
    from hydra_umm.eval.benchmarks.geneval import write_geneval

    data = tmp_path / "data"
    make_dataset(data, n=12, size=32, seed=0, prompts_per_tag=1)
    (tmp_path / "run").mkdir()
    main(["eval", "report", "--run", str(tmp_path / "run"), "--model", str(harmon_dir), "--limit", "2",
          "--images", str(data / "test.jsonl"), "--metadata", str(data / "evaluation_metadata.jsonl"),
          "--manifest", str(data / "test.jsonl")])
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "<h2>Reconstruction" in page and "<h2>Generation" in page and "<h2>Understanding" in page
    out = write_geneval(load_pipeline(harmon_dir), data / "evaluation_metadata.jsonl", tmp_path / "geneval", n_samples=1)
    samples = sorted(out.glob("*/samples/00000.png"))
    assert len(samples) == len(list(out.iterdir())) > 0 and Image.open(samples[0]).size == (32, 32)


def test_a_continued_run_samples_with_its_own_settings(harmon_dir: Path) -> None:
    """`init=` builds the saved model, then adopts the run's sampling keys (harmon.sampling_steps, ...)
    into its config: the diffusion head must read them when it samples, not when it was built."""
    from hydra_umm.config import adopt_run_keys

    model = HarmonModel.from_pretrained(harmon_dir)
    run = load_config("harmon-tiny", ["harmon.image_size=32", "harmon.mar_steps=2", "harmon.sampling_steps=3",
                                      "harmon.clip_denoised=1.5"])
    adopt_run_keys(model.cfg.harmon, run.harmon)
    calls = []
    model.head.net.register_forward_hook(lambda module, args, out: calls.append(1))
    latents = HarmonPipeline(model).generate_latents(["a red square"], cfg_scale=1.0)
    assert len(calls) == 2 * 3  # two masked-autoregressive steps of three respaced steps each
    assert latents.abs().max() <= 1.5 + 1e-5  # the last step returns the clipped x0 estimate's mean
