"""Training recipes on the shared :class:`~hydra_umm.train.engine.Trainer`.

- ``tokenizer`` stage 1: HYDRA-TOK end to end (flow + LPIPS + GSB + self-distillation);
  stage 2: encoder frozen, decoder refined with the GAN, no distillation (paper appendix D).
- ``umm`` stages I / II / III (paper Tab. 6): I trains Sem-ViT, projector and vision head with the
  LLM frozen; II trains everything but Gen-ViT and the GSB compressor; III is instruction tuning
  (same parameters, instruction data in the mixture).

A run reads ``cfg.data`` (comma-separated sources, see :func:`open_sources`), writes its run folder
``cfg.train.out_dir`` (config, log, TensorBoard, samples/, checkpoints/) and saves the trained model
with ``save_pretrained`` into ``<out_dir>/model``. One process or many (torchrun): the tokenizer is
wrapped in DDP, the LLM side sharded with FSDP2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from hydra_umm.config import Config, to_dict
from hydra_umm.data.datasets import TASKS, ConversationDataset, RecordDataset, ShardDataset, shapes_records
from hydra_umm.data.manifest import read_manifest
from hydra_umm.data.mixture import MixtureDataset, TaskMixture, mixture_stream, shard_stream
from hydra_umm.data.transforms import ImageTransform
from hydra_umm.train.distributed import (DistEnv, checkpoint_activations, data_parallel, full_model_state,
                                         init_distributed, shard)
from hydra_umm.train.engine import Trainer
from hydra_umm.train.schedule import build_optimizer

log = logging.getLogger(__name__)

# Data ratios instruction : caption : text-to-image per HYDRA stage (the paper's Tab. 6 pattern).
STAGE_RATIOS = {"I": [0.0, 1.0, 3.0], "II": [0.0, 2.0, 2.0], "III": [1.0, 2.0, 2.0]}
TOKENIZER_STAGES = ("1", "2")
SHAPES_DEFAULT_SCENES = 2000


# ------------------------------------------------------------------------------------ data


def _split_records(records: list[dict], split: str) -> list[dict]:
    """The records of ``split`` when the records name splits; all of them for "train" otherwise."""
    if any("split" in r for r in records):
        return [r for r in records if r.get("split") == split]
    return records if split == "train" else []


def open_sources(data: str, tasks: Sequence[str], image_size: int, seed: int, split: str = "train") -> dict[str, Dataset]:
    """Map-style datasets per task from ``data``, comma-separated specs:

    ``shapes`` or ``shapes:N`` (the shapes world in memory, N scenes), a ``.jsonl`` manifest, an
    image folder (captions from ``.txt`` files beside the images), a LLaVA ``.json`` (instruction
    data only; images relative to its folder). Several sources of one task are concatenated.
    Tasks a source cannot give (instruction without QA pairs) are left to the other sources.
    """
    if not data:
        raise ValueError("no training data: set data=<manifest.jsonl|folder|llava.json|shapes[:N]>")
    found: dict[str, list[Dataset]] = {t: [] for t in tasks}
    for spec in (s.strip() for s in data.split(",") if s.strip()):
        if spec == "shapes" or spec.startswith("shapes:"):
            n = int(spec.partition(":")[2] or SHAPES_DEFAULT_SCENES)
            records = shapes_records(image_size, n=n, seed=seed, split=split)
        elif spec.endswith(".json"):
            if "instruction" in tasks and split == "train":
                found["instruction"].append(ConversationDataset(spec, Path(spec).parent, image_size))
            continue
        elif spec.endswith(".jsonl"):
            records = _split_records(read_manifest(spec), split)
        elif Path(spec).is_dir():
            if split != "train":
                continue
            records = RecordDataset.from_folder(spec, "t2i", image_size).records
        else:
            raise ValueError(f"data source {spec!r}: not a .jsonl manifest, folder, LLaVA .json or shapes[:N]"
                             " (webdataset shards: tokenizer training only, data=<shard pattern .tar>)")
        for task in tasks:
            if records and (task != "instruction" or any(r.get("qa") for r in records)):
                found[task].append(RecordDataset(records, task, image_size))
    return {t: ds[0] if len(ds) == 1 else ConcatDataset(ds) for t, ds in found.items() if ds}


def _stream(cfg: Config, ratios: Sequence[float], image_size: int, env: DistEnv):
    """The resumable training batch stream of this rank, and the mixture (for its skip count)."""
    train = cfg.train
    if ".tar" in cfg.data:  # webdataset shards: one image-caption stream (tokenizer data)
        dataset = ShardDataset(cfg.data, "t2i", image_size)
        return shard_stream(dataset, train.batch_size, train.num_workers), dataset
    tasks = [t for t, r in zip(TASKS, ratios) if r > 0]
    sources = open_sources(cfg.data, tasks, image_size, cfg.seed)
    mixture = MixtureDataset(sources, TaskMixture(list(ratios), seed=cfg.seed, block=train.mixture_block))
    return mixture_stream(mixture, train.batch_size, env.rank, env.world_size, train.num_workers), mixture


def _validation_batches(cfg: Config, tasks: Sequence[str], image_size: int, count: int) -> list[list[dict]]:
    """A few fixed validation batches (item lists) from the "val" split, or none when there is none."""
    if ".tar" in cfg.data:
        return []
    sources = open_sources(cfg.data, tasks, image_size, cfg.seed, split="val")
    items = [sources[t][i] for t in tasks if t in sources for i in range(min(count, len(sources[t])))]
    size = cfg.train.batch_size
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------- objectives


class TokenizerObjective(nn.Module):
    """HYDRA-TOK's loss for one stage on a collated batch. In stage 2 the discriminator's own hinge
    loss is added to the total: HydraTok computes it on the detached clean estimate and its
    generator term does not reach the discriminator, so one optimiser steps both correctly."""

    def __init__(self, tokenizer: nn.Module, stage: int):
        super().__init__()
        self.tokenizer, self.stage = tokenizer, stage

    def forward(self, batch: Mapping) -> dict[str, torch.Tensor]:
        out = self.tokenizer(batch["image"], stage=self.stage)
        if self.stage == 2:
            out["loss"] = out["loss"] + out["loss_disc"]
        return out


def save_samples(images: torch.Tensor, path: Path, rows: int = 1) -> None:
    """A grid of (B, 3, H, W) images in [-1, 1] as a PNG, ``rows`` rows."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.detach().float().cpu() + 1) / 2, path, nrow=max(1, len(images) // rows))


def _skipped(source) -> int:
    """Unreadable images skipped so far by a mixture or a shard dataset."""
    return source.skipped if hasattr(source, "skipped") else source.skips.count


def _fit(trainee: nn.Module, model: nn.Module, optimizer, scheduler, data, mixture, val: list[list[dict]],
         sample: Callable[[int], None], cfg: Config, env: DistEnv) -> Path:
    """Run the Trainer on ``trainee`` with validation (mean losses over the fixed ``val`` batches,
    the count of skipped images, and ``sample(step)`` on every rank, which writes on rank 0), then
    save ``model`` into ``<out_dir>/model``."""
    from hydra_umm.data.datasets import collate_items

    def validate(module: nn.Module, step: int) -> dict[str, float]:
        totals: dict[str, float] = {}
        for items in val:
            for k, v in module(collate_items(items)).items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(val)
        sample(step)
        return {**totals, "data_skipped": float(_skipped(mixture))}

    Trainer(trainee, optimizer, scheduler, data, cfg.train, env, validate=validate, run_config=to_dict(cfg)).fit()
    model_dir = Path(cfg.train.out_dir) / "model"
    sharded = env.world_size > 1 and trainee is model  # FSDP2 (HYDRA); DDP keeps full weights
    state = full_model_state(model) if sharded else None
    if env.is_main:
        model.save_pretrained(model_dir, **({"state_dict": state} if sharded else {}))
        log.info("%s saved to %s (%d unreadable images skipped)", type(model).__name__, model_dir, _skipped(mixture))
    return model_dir


# ------------------------------------------------------------------------------- recipes


def _check_stage(stage: str, allowed: Sequence[str], what: str) -> None:
    if stage not in allowed:
        raise ValueError(f"{what} training has stages {', '.join(allowed)}; got stage={stage!r}")


def train_tokenizer(cfg: Config) -> Path:
    """Train HYDRA-TOK for ``cfg.stage`` ("1" or "2"); returns the saved model directory.
    Stage 2 starts from ``cfg.init`` (a stage-1 HydraTok directory)."""
    from hydra_umm.models.hydra_tok import HydraTok

    _check_stage(cfg.stage, TOKENIZER_STAGES, "tokenizer")
    stage = int(cfg.stage)
    if stage == 2 and not cfg.init:
        raise ValueError("tokenizer stage 2 refines a stage-1 tokenizer: set init=<stage-1 model directory>")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    tok = HydraTok.from_pretrained(cfg.init) if cfg.init else HydraTok(cfg.tokenizer)
    cfg.tokenizer = tok.cfg
    tok.requires_grad_(False)
    components = {"decoder": tok.decoder}
    if stage == 1:
        components["encoder"] = nn.ModuleList([tok.vit, tok.bottleneck])
    else:
        components["discriminator"] = tok.discriminator
    for module in components.values():
        module.requires_grad_(True)
    tok.teacher.requires_grad_(False)
    tok.to(env.device)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(tok, (Block,))
    objective = data_parallel(TokenizerObjective(tok, stage), env)
    optimizer, scheduler = build_optimizer(components, cfg.train, tok)
    size = tok.cfg.image_size
    data, mixture = _stream(cfg, [0, 0, 1], size, env)
    val = _validation_batches(cfg, ["t2i"], size, count=cfg.train.batch_size)
    out_dir = Path(cfg.train.out_dir)

    def sample(step: int) -> None:
        if val and env.is_main:
            images = torch.stack([it["image"] for it in val[0]]).to(env.device)
            g = torch.Generator(device=env.device).manual_seed(cfg.seed)
            recon = tok.decode(tok.encode(images), generator=g)
            save_samples(torch.cat([images, recon]), out_dir / "samples" / f"recon_{step:07d}.png", rows=2)

    return _fit(objective, tok, optimizer, scheduler, data, mixture, val, sample, cfg, env)


def _text_corpus(cfg: Config, image_size: int) -> list[str]:
    """Texts to train a tiny text tokenizer on: the captions, questions and answers of the data."""
    sources = open_sources(cfg.data, ["caption", "instruction"], image_size, cfg.seed)
    texts = []
    for dataset in sources.values():
        parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
        for part in parts:
            for record in getattr(part, "records", []):
                if isinstance(record, dict):
                    texts.append(record.get("caption", ""))
                    texts += [q["question"] + " " + str(q["answer"]) for q in record.get("qa", [])]
                else:  # a conversation: (image, turns)
                    texts += record[1]
    return [t for t in texts if t]


def train_umm(cfg: Config) -> Path:
    """Train HYDRA for ``cfg.stage`` ("I", "II", "III"); returns the saved model directory.
    Stage I builds the model from ``umm.tokenizer_path`` (a trained HydraTok) and the LLM
    (``llm.path`` or a fresh tiny one); later stages continue from ``cfg.init``."""
    from hydra_umm.inference import HydraPipeline
    from hydra_umm.models.hydra import HydraModel
    from hydra_umm.models.text_tokenizer import build_text_tokenizer

    _check_stage(cfg.stage, tuple(STAGE_RATIOS), "HYDRA")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = HydraModel.from_pretrained(cfg.init)
    else:
        if not cfg.umm.tokenizer_path:
            raise ValueError("HYDRA stage I needs a trained tokenizer: set umm.tokenizer_path=<HydraTok directory>")
        texts = [] if cfg.llm.path else _text_corpus(cfg, cfg.tokenizer.image_size)
        model = HydraModel(cfg, build_text_tokenizer(cfg.llm, texts))
    model.set_stage(cfg.stage)
    model.to(env.device)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model, (Block, type(model.llm.model.layers[0])))
    ratios = cfg.train.ratios or STAGE_RATIOS[cfg.stage]
    size = model.tokenizer.cfg.image_size
    data, mixture = _stream(cfg, ratios, size, env)
    tasks = [t for t, r in zip(TASKS, ratios) if r > 0]
    val = _validation_batches(cfg, tasks, size, count=2)
    if env.world_size > 1:
        shard(model, list(model.llm.model.layers), bf16=cfg.train.bf16 and env.device.type == "cuda")
    components = model.param_groups()  # after sharding, which replaces the parameters
    optimizer, scheduler = build_optimizer({k: v for k, v in components.items() if v}, cfg.train, model)
    out_dir = Path(cfg.train.out_dir)
    prompts = [it["prompt"] for batch in val for it in batch if it["kind"] == "gen"][:4]

    def sample(step: int) -> None:  # every rank generates (the LLM may be sharded); rank 0 writes
        if prompts:
            images = HydraPipeline(model).generate(prompts, seed=cfg.seed)
            if env.is_main:
                grid = torch.stack([ImageTransform(size)(im) for im in images])
                save_samples(grid, out_dir / "samples" / f"t2i_{step:07d}.png")

    return _fit(model, model, optimizer, scheduler, data, mixture, val, sample, cfg, env)


RECIPES: dict[str, Callable[[Config], Path]] = {"tokenizer": train_tokenizer, "umm": train_umm}
