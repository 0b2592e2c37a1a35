"""The GPU suite's CPU-checkable parts: refusal without CUDA, and every measurement on the tiny
preset on the CPU with bf16 off (FSDP2 in a one-process gloo group)."""

import contextlib

import pytest
import torch
import torch.distributed as dist

from hydra_umm.bench import flops, gpu
from hydra_umm.bench.train import hydra_costs
from hydra_umm.bench.umm import mixed_batch
from hydra_umm.config import load_config
from hydra_umm.inference import HydraPipeline

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["tokenizer.image_size=32", "tokenizer.decode_steps=2"])


def test_refuses_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu.CudaUnavailable, match="needs a CUDA device.*hydra-umm bench"):
        gpu.run(include_paper=True)


def test_build_model_keeps_the_configured_vocabulary(cfg):
    model = gpu.build_model(cfg, CPU)
    assert model.llm.lm_head.out_features == cfg.llm.vocab_size > len(model.text_tokenizer)


def test_train_step_figures_on_cpu(cfg):
    with gpu.single_process_group(CPU):
        assert dist.is_initialized() and dist.get_world_size() == 1
        samples, tokens, rate = gpu.train_step_figures(cfg, CPU, 2, checkpointing=True, compile=False, bf16=False,
                                                       iters=1, warmup=0)
    assert not dist.is_initialized()  # the group made for the measurement is gone
    model = gpu.build_model(cfg, CPU)
    batch = mixed_batch(model, 2)
    B, L = batch.layout.input_ids.shape
    assert samples.name == f"gpu tiny: HYDRA step B={B} L={L} bf16 off ckpt on compile off: samples/s"
    assert tokens.value == pytest.approx(samples.value * L)
    step_flops = flops.total(hydra_costs(model, batch))  # activation checkpointing is not model FLOPs
    assert rate.value == pytest.approx(step_flops * samples.value / B / 1e9)


@pytest.fixture(scope="module")
def pipe(cfg):
    return HydraPipeline(gpu.build_model(cfg, CPU))


def test_t2i_figures_on_cpu(pipe):
    (figure,) = gpu.t2i_figures(pipe, batch_size=2, steps=2, bf16=False, iters=1, warmup=0)
    assert figure.name.startswith("gpu tiny: T2I 32px 2 steps+CFG B=2") and figure.name.endswith("cached")
    assert figure.unit == "s/image" and figure.value > 0 and figure.reference_value > 0


def test_understanding_figures_on_cpu(pipe):
    prefill, decode = gpu.understanding_figures(pipe, batch_size=2, max_new_tokens=4, bf16=False)
    model = pipe.model
    positions = model.layout([model.understanding_segments(gpu.QUESTION)]).input_ids.shape[1]
    assert prefill.name == f"gpu tiny: understanding B=2, {positions}-pos prefill" and prefill.value > 0
    assert decode.name == "gpu tiny: understanding B=2, decode (KV cache)"
    assert decode.unit == "tokens/s" and decode.value > 0


def test_a_failing_configuration_is_reported_and_left_out(capsys):
    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    assert gpu._attempt("training step (ckpt off)", CPU, out_of_memory) == []
    assert "training step (ckpt off) failed: RuntimeError: CUDA out of memory" in capsys.readouterr().err


def test_run_measures_the_paper_preset_in_every_configuration(monkeypatch):
    """The suite's plan, with the measurements recorded instead of run (they need a GPU)."""
    calls: dict[str, list[tuple]] = {"train": [], "t2i": [], "answer": []}

    def record(kind: str):
        return lambda *args: calls[kind].append(args) or []

    monkeypatch.setattr(gpu, "require_cuda", lambda: CPU)
    monkeypatch.setattr(gpu, "single_process_group", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(gpu, "build_model", lambda cfg, device: cfg.name)
    monkeypatch.setattr(gpu, "HydraPipeline", lambda model: f"pipeline of {model}")
    for kind, name in [("train", "train_step_figures"), ("t2i", "t2i_figures"), ("answer", "understanding_figures")]:
        monkeypatch.setattr(gpu, name, record(kind))
    gpu.run(include_paper=True)

    variants = {(ckpt, compile) for _, _, _, ckpt, compile, _ in calls["train"]}
    assert variants == {(False, False), (False, True), (True, False), (True, True)}
    for cfg, _, batch, _, _, bf16 in calls["train"]:
        assert (cfg.name, cfg.tokenizer.image_size, cfg.llm.hidden_size, batch, bf16) == (
            "paper-1.5b", 448, 1536, gpu.TRAIN_BATCH, True)
    assert calls["t2i"] == [("pipeline of paper-1.5b", 1, 50, True), ("pipeline of paper-1.5b", 16, 50, True)]
    assert calls["answer"] == [("pipeline of paper-1.5b", gpu.ANSWER_BATCH, gpu.ANSWER_TOKENS, True)]
