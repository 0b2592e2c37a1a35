"""Training recipes on the shared :class:`~hydra_umm.train.engine.Trainer`.

- ``tokenizer`` stage 1: HYDRA-TOK end to end (flow + LPIPS + GSB + self-distillation);
  stage 2: encoder frozen, decoder refined with the GAN, no distillation (paper appendix D).
- ``xtok`` stages 1 / 2 / 3: HYDRA-XTok on images and clips in turn; 1 end to end, 2 decoder + GAN
  on the frozen encoder, 3 Sem-ViT on standardised latents (Gen-ViT and decoder frozen).
- ``umm`` stages I / II / III (paper Tab. 6): I trains Sem-ViT, projector and vision head with the
  LLM frozen; II trains everything but Gen-ViT and the GSB compressor; III is instruction tuning
  (same parameters, instruction data in the mixture).

A run reads ``cfg.data`` (comma-separated sources, see :func:`open_sources`), writes its run folder
``cfg.train.out_dir`` (config, log, TensorBoard, samples/, checkpoints/) and saves the trained model
with ``save_pretrained`` into ``<out_dir>/model``. One process or many (torchrun): the tokenizer is
wrapped in DDP, the LLM side sharded with FSDP2.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from hydra_umm.config import Config, adopt_run_keys, to_dict
from hydra_umm.data.datasets import (IMAGE_TASKS, RECORD_TASKS, ConversationDataset, RecordDataset, ShardDataset,
                                     shapes_records)
from hydra_umm.data.manifest import read_manifest, split_records
from hydra_umm.data.mixture import MixtureDataset, TaskMixture, mixture_stream, shard_stream, skipped_count
from hydra_umm.data.transforms import ImageTransform
from hydra_umm.train.distributed import (DistEnv, checkpoint_activations, data_parallel, full_model_state,
                                         init_distributed, shard)
from hydra_umm.train.engine import Trainer, to_device
from hydra_umm.train.reuse import train_once
from hydra_umm.train.schedule import build_optimizer

log = logging.getLogger(__name__)

# Data ratios instruction : caption : text-to-image per HYDRA stage (the paper's Tab. 6 pattern).
STAGE_RATIOS = {"I": [0.0, 1.0, 3.0], "II": [0.0, 2.0, 2.0], "III": [1.0, 2.0, 2.0]}
# HYDRA-X's ratios in the paper's Tab. 8 order, text : image-caption : image-generation :
# video-caption : video-instruction : image-instruction : edit, then video generation (ours: an
# eighth number, 0 when left out). Stage II is the paper's 0:2:6:1:1:0:0 as it stands (no video
# generation); I and III are ours.
X_RATIO_TASKS = ("text", "caption", "t2i", "video_caption", "video_instruction", "instruction", "edit", "video_t2i")
X_STAGE_RATIOS = {"I": [0.0, 1.0, 3.0, 1.0, 0.0, 0.0, 1.0, 1.0], "II": [0.0, 2.0, 6.0, 1.0, 1.0, 0.0, 0.0],
                  "III": [1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 1.0]}
CLIP_TASKS = {"video_caption": "caption", "video_instruction": "instruction", "video_t2i": "t2i"}  # -> ClipDataset's
SHAPES_DEFAULT_CLIPS, SHAPES_DEFAULT_EDITS = 400, 1000
TOKENIZER_STAGES = ("1", "2")
SHAPES_DEFAULT_SCENES = 2000


# ------------------------------------------------------------------------------------ data


def stage_ratios(cfg: Config) -> dict[str, float]:
    """The mixture of a HYDRA (or HYDRA-X) stage: ``train.ratios`` or the stage's default, as task -> ratio.
    HYDRA takes 3 numbers (instruction : caption : t2i), HYDRA-X 7 in the paper's Tab. 8 order or 8
    (video generation last)."""
    given = cfg.train.ratios
    if cfg.umm.xtok:
        ratios = list(given or X_STAGE_RATIOS[cfg.stage])
        if len(ratios) not in (7, 8):
            raise ValueError(f"HYDRA-X's train.ratios give 7 or 8 numbers for {' : '.join(X_RATIO_TASKS)} "
                             f"(the 8th optional), got {ratios}")
        return dict(zip(X_RATIO_TASKS, ratios + [0.0] * (8 - len(ratios))))
    return image_ratios(given or STAGE_RATIOS[cfg.stage])


def image_ratios(ratios: Sequence[float]) -> dict[str, float]:
    """instruction : caption : t2i as task -> ratio (HYDRA's stages, Harmon)."""
    if len(ratios) != len(IMAGE_TASKS):
        raise ValueError(f"train.ratios give {len(IMAGE_TASKS)} numbers for {' : '.join(IMAGE_TASKS)}, got "
                         f"{list(ratios)} (HYDRA-X's video and edit tasks need umm.xtok=true)")
    return dict(zip(IMAGE_TASKS, ratios))


def _gives(task: str, records: Sequence[dict]) -> bool:
    """Whether records (of images or clips) give items of ``task``: questions only where some record has them."""
    return task != "instruction" or any(r.get("qa") for r in records)


def open_sources(data: str, tasks: Sequence[str], image_size: int, seed: int, split: str = "train",
                 frames: int = 17, anchor_frames: bool = False) -> dict[str, Dataset]:
    """Map-style datasets per task from ``data``, comma-separated specs:

    ``shapes`` or ``shapes:N`` (the shapes world in memory, N scenes), ``shapes-clips[:N]`` (N clips
    of the shapes world in motion, in memory), ``shapes-edits[:N]`` (N shapes-world edits, N/10 in
    the other splits), a ``.jsonl`` manifest (of images, or of clips when its records have
    ``video``), an image folder (captions from ``.txt`` files beside the images), a LLaVA ``.json``
    (instruction data only; images relative to its folder). Clips have ``frames`` frames (longer ones are cut). A clip
    manifest's captions and questions are about its clips, so it gives the image tasks nothing, unless
    ``anchor_frames`` (the tokenizers, which read no text) takes its anchor frames as images. Several
    sources of one task are concatenated. Tasks a source cannot give are left to the other sources.
    """
    from hydra_umm.data.datasets import EditDataset
    from hydra_umm.data.shapes.edits import edit_records
    from hydra_umm.data.shapes.motion import clip_records
    from hydra_umm.data.video import ClipDataset

    if not data:
        raise ValueError("no training data: set data=<manifest.jsonl|folder|llava.json|shapes[:N]>")
    found: dict[str, list[Dataset]] = {t: [] for t in tasks}

    def add_clips(make: Callable[[str], Dataset], records: Sequence[dict]) -> None:
        for task in tasks:
            if task in CLIP_TASKS and _gives(CLIP_TASKS[task], records):
                found[task].append(make(CLIP_TASKS[task]))

    def size(spec: str, default: int) -> int:
        """N of a ``name[:N]`` source."""
        count = spec.partition(":")[2]
        if count and not count.isdigit():
            raise ValueError(f"data source {spec!r}: expected {spec.partition(':')[0]}:N with N a whole number")
        return int(count or default)

    for spec in (s.strip() for s in data.split(",") if s.strip()):
        name = spec.partition(":")[0]
        if name == "shapes-clips":
            clips = clip_records(image_size, n=size(spec, SHAPES_DEFAULT_CLIPS), frames=frames, seed=seed, split=split)
            add_clips(lambda task: ClipDataset(clips, task, image_size, frames), clips)
            continue
        if name == "shapes-edits":
            if "edit" in tasks:
                n = size(spec, SHAPES_DEFAULT_EDITS)
                edits = edit_records(image_size, n if split == "train" else max(7, n // 10), seed=seed, split=split)
                found["edit"].append(EditDataset(edits, image_size))
            continue
        if name == "shapes":
            records = shapes_records(image_size, n=size(spec, SHAPES_DEFAULT_SCENES), seed=seed, split=split)
        elif spec.endswith(".json"):
            if "instruction" in tasks and split == "train":
                found["instruction"].append(ConversationDataset(spec, Path(spec).parent, image_size))
            continue
        elif spec.endswith(".jsonl"):
            records = split_records(read_manifest(spec), split)
            if any("video" in r for r in records):
                add_clips(lambda task: ClipDataset.from_manifest(spec, task, image_size, frames, split), records)
                if not anchor_frames:
                    continue
        elif Path(spec).is_dir():
            if split != "train":
                continue
            records = RecordDataset.from_folder(spec, "t2i", image_size).records
        else:
            raise ValueError(f"data source {spec!r}: not a .jsonl manifest, folder, LLaVA .json, shapes[:N], "
                             "shapes-clips[:N] or shapes-edits[:N] (webdataset shards: tokenizer training only, "
                             "data=<shard pattern .tar>)")
        for task in tasks:
            if task in RECORD_TASKS and records and _gives(task, records):
                found[task].append(RecordDataset(records, task, image_size))
    if split == "train" and not any(found.values()):
        raise ValueError(f"data={data!r} gives no training records for the tasks {', '.join(tasks)} (records of "
                         "split 'val' or 'test' only, or without the captions or questions these tasks need?)")
    return {t: ds[0] if len(ds) == 1 else ConcatDataset(ds) for t, ds in found.items() if ds}


def _stream(cfg: Config, ratios: Mapping[str, float], image_size: int, env: DistEnv, anchor_frames: bool = False):
    """The resumable training batch stream of this rank, and the mixture (for its skip count);
    ``anchor_frames`` as :func:`open_sources` takes it."""
    train = cfg.train
    tasks = [t for t, r in ratios.items() if r > 0]
    if ".tar" in cfg.data:  # webdataset shards: one image-caption stream (tokenizer data)
        if tasks != ["t2i"]:
            raise ValueError(f"webdataset shards give image-caption pairs only, but this run's ratios ask for "
                             f"{', '.join(tasks)}: train from manifests (.jsonl), or set the other ratios to 0")
        dataset = ShardDataset(cfg.data, "t2i", image_size)
        return shard_stream(dataset, train.batch_size, train.num_workers), dataset
    sources = open_sources(cfg.data, tasks, image_size, cfg.seed, frames=train.clip_frames, anchor_frames=anchor_frames)
    group = train.batch_size if train.task_per_batch else 1
    mixture = MixtureDataset(sources, TaskMixture(ratios, seed=cfg.seed, block=train.mixture_block, group=group))
    return mixture_stream(mixture, train.batch_size, env.rank, env.world_size, train.num_workers), mixture


def _validation_batches(cfg: Config, tasks: Sequence[str], image_size: int, count: int,
                        anchor_frames: bool = False) -> list[list[dict]]:
    """A few fixed validation batches (item lists) from the "val" split, or none when there is none."""
    if ".tar" in cfg.data:
        return []
    sources = open_sources(cfg.data, tasks, image_size, cfg.seed, split="val", frames=cfg.train.clip_frames,
                           anchor_frames=anchor_frames)
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


def _fit(trainee: nn.Module, model: nn.Module, optimizer, scheduler, data, mixture, val: list[list[dict]],
         sample: Callable[[int], None], cfg: Config, env: DistEnv) -> Path:
    """Run the Trainer on ``trainee`` with validation (mean losses over the fixed ``val`` batches,
    the count of skipped images, and ``sample(step)`` on every rank, which writes on rank 0), then
    save ``model`` into ``<out_dir>/model``."""
    from hydra_umm.data.datasets import collate_items

    def validate(module: nn.Module, step: int) -> dict[str, float]:
        totals: dict[str, float] = {}
        for items in val:
            for k, v in module(to_device(collate_items(items), env.device)).items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(val)
        sample(step)
        return {**totals, "data_skipped": float(skipped_count(mixture))}

    Trainer(trainee, optimizer, scheduler, data, cfg.train, env, validate=validate, run_config=to_dict(cfg)).fit()
    model_dir = Path(cfg.train.out_dir) / "model"
    sharded = env.world_size > 1 and trainee is model  # FSDP2 (HYDRA); DDP keeps full weights
    state = full_model_state(model) if sharded else None
    if env.is_main:
        model.save_pretrained(model_dir, **({"state_dict": state} if sharded else {}))
        log.info("%s saved to %s (%d unreadable images skipped)", type(model).__name__, model_dir,
                 skipped_count(mixture))
    return model_dir


# ------------------------------------------------------------------------------- recipes


def _check_stage(stage: str, allowed: Sequence[str], what: str) -> None:
    if stage not in allowed:
        raise ValueError(f"{what} training has stages {', '.join(allowed)}; got stage={stage!r}")


def train_tokenizer(cfg: Config) -> Path:
    """Train HYDRA-TOK for ``cfg.stage`` ("1" or "2"); returns the saved model directory.
    Stage 2 starts from ``cfg.init`` (a stage-1 HydraTok directory) and first records the frozen
    encoder's per-channel latent mean/std over ``train.latent_stats_images`` training images."""
    from hydra_umm.models.hydra_tok import HydraTok

    _check_stage(cfg.stage, TOKENIZER_STAGES, "tokenizer")
    stage = int(cfg.stage)
    if stage == 2 and not cfg.init:
        raise ValueError("tokenizer stage 2 refines a stage-1 tokenizer: set init=<stage-1 model directory>")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    tok = HydraTok.from_pretrained(cfg.init) if cfg.init else HydraTok(cfg.tokenizer)
    cfg.tokenizer = adopt_run_keys(tok.cfg, cfg.tokenizer)
    tok.requires_grad_(False)
    components = {"decoder": tok.decoder}
    if stage == 1:
        components["encoder"] = nn.ModuleList([tok.vit, tok.bottleneck])
        if not cfg.tokenizer.teacher_weights:
            log.warning("tokenizer.teacher_weights is not set: HYDRA-TOK distills from a randomly initialised "
                        "teacher (InternViT in the paper; the demo trains a small one)")
    else:
        components["discriminator"] = tok.discriminator
    for module in components.values():
        module.requires_grad_(True)
    tok.teacher.requires_grad_(False)
    tok.to(env.device)
    size = tok.cfg.image_size
    if stage == 2:  # the encoder is final: record its latent statistics (HYDRA's flow works on standardised z)
        batches, _ = _stream(cfg, {"t2i": 1.0}, size, env, anchor_frames=True)
        count = -(-cfg.train.latent_stats_images // cfg.train.batch_size)
        tok.record_latent_stats(batch["image"].to(env.device) for _, batch in zip(range(count), batches))
    if cfg.train.activation_checkpointing:
        checkpoint_activations(tok, (Block,))
    objective = data_parallel(TokenizerObjective(tok, stage), env)
    optimizer, scheduler = build_optimizer(components, cfg.train, tok)
    data, mixture = _stream(cfg, {"t2i": 1.0}, size, env, anchor_frames=True)
    val = _validation_batches(cfg, ["t2i"], size, count=cfg.train.batch_size, anchor_frames=True)
    out_dir = Path(cfg.train.out_dir)

    def sample(step: int) -> None:
        if val and env.is_main:
            images = torch.stack([it["image"] for it in val[0]]).to(env.device)
            g = torch.Generator(device=env.device).manual_seed(cfg.seed)
            recon = tok.decode(tok.encode(images), generator=g)
            save_samples(torch.cat([images, recon]), out_dir / "samples" / f"recon_{step:07d}.png", rows=2)

    return _fit(objective, tok, optimizer, scheduler, data, mixture, val, sample, cfg, env)


def _text_corpus(cfg: Config, image_size: int) -> list[str]:
    """Texts to train a tiny text tokenizer on: the captions, questions, answers and edit instructions
    of the data (of images, and with HYDRA-X of clips and edits)."""
    tasks = ["caption", "instruction"] + (["video_instruction", "edit"] if cfg.umm.xtok else [])
    sources = open_sources(cfg.data, tasks, image_size, cfg.seed, frames=cfg.train.clip_frames)
    texts = []
    for dataset in sources.values():
        parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
        for part in parts:
            for record in getattr(part, "records", []):
                if isinstance(record, dict):
                    texts += [record.get("caption", ""), record.get("instruction", "")]
                    texts += [q["question"] + " " + str(q["answer"]) for q in record.get("qa", [])]
                else:  # a conversation: (image, turns)
                    texts += record[1]
    return [t for t in texts if t]


def train_umm(cfg: Config) -> Path:
    """Train HYDRA for ``cfg.stage`` ("I", "II", "III"); returns the saved model directory.
    Stage I builds the model from ``umm.tokenizer_path`` (a trained HydraTok, or a HydraXTok for
    HYDRA-X with its clip and edit tasks) and the LLM (``llm.path`` or a fresh tiny one); later
    stages continue from ``cfg.init``."""
    from hydra_umm.inference import HydraPipeline
    from hydra_umm.models.hydra import HydraModel, HydraXTok, tokenizer_class
    from hydra_umm.models.text_tokenizer import build_text_tokenizer

    _check_stage(cfg.stage, tuple(STAGE_RATIOS), "HYDRA")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = HydraModel.from_pretrained(cfg.init)
    else:
        if not cfg.umm.tokenizer_path:
            raise ValueError("HYDRA stage I needs a trained tokenizer: set umm.tokenizer_path=<HydraTok or HydraXTok "
                             "directory>")
        cfg.umm.xtok = tokenizer_class(cfg.umm.tokenizer_path) is HydraXTok  # the tokenizer decides: HYDRA or HYDRA-X
        texts = [] if cfg.llm.path else _text_corpus(cfg, cfg.tokenizer.image_size)
        model = HydraModel(cfg, build_text_tokenizer(cfg.llm, texts))
    cfg.umm = adopt_run_keys(model.cfg.umm, cfg.umm)
    model.set_stage(cfg.stage)
    model.to(env.device)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model, (Block, type(model.llm.model.layers[0])))
    ratios = stage_ratios(cfg)
    size = model.tokenizer.cfg.image_size
    data, mixture = _stream(cfg, ratios, size, env)
    tasks = [t for t, r in ratios.items() if r > 0]
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


# Harmon (DESIGN section 5): "vae" trains its KL autoencoder, "unified" the model on top of it. Data
# ratio instruction : caption : text-to-image of Harmon's released fine-tune recipe (1 caption : 4 t2i).
HARMON_STAGES = ("vae", "unified")
HARMON_RATIOS = [0.0, 1.0, 4.0]


class AutoencoderObjective(nn.Module):
    """Harmon's KL autoencoder's loss (L1 + lambda_kl * KL) on a collated batch."""

    def __init__(self, vae: nn.Module, lambda_kl: float):
        super().__init__()
        self.vae, self.lambda_kl = vae, lambda_kl

    def forward(self, batch: Mapping) -> dict[str, torch.Tensor]:
        return self.vae(batch["image"], self.lambda_kl)


def train_harmon(cfg: Config) -> Path:
    """Train Harmon for ``cfg.stage``; returns the saved model directory. "vae": the KL autoencoder on
    images alone (then ``harmon.vae_path=<that directory>``); "unified": MAR encoder/decoder,
    projectors, diffusion head and LLM on the frozen autoencoder (or continued from ``cfg.init``).
    Weight decay spares norms, biases and the diffusion head, as Harmon's optimiser does. One process
    or many (DDP: every rank holds the whole model)."""
    from hydra_umm.inference.harmon_pipeline import HarmonPipeline
    from hydra_umm.models.harmon import AutoencoderKL, HarmonModel
    from hydra_umm.models.text_tokenizer import build_text_tokenizer

    _check_stage(cfg.stage, HARMON_STAGES, "Harmon")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    size, out_dir = cfg.harmon.image_size, Path(cfg.train.out_dir)
    if cfg.stage == "vae":
        vae = AutoencoderKL(cfg.harmon).to(env.device)
        components = {"encoder": [*vae.encoder.parameters(), *vae.quant_conv.parameters()],
                      "decoder": [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]}
        optimizer, scheduler = build_optimizer(components, cfg.train, vae)
        data, mixture = _stream(cfg, {"t2i": 1.0}, size, env, anchor_frames=True)
        val = _validation_batches(cfg, ["t2i"], size, count=cfg.train.batch_size, anchor_frames=True)

        def reconstruct(step: int) -> None:
            if val and env.is_main:
                images = torch.stack([it["image"] for it in val[0]]).to(env.device)
                recon = vae.decode(vae.encode(images))
                save_samples(torch.cat([images, recon]), out_dir / "samples" / f"recon_{step:07d}.png", rows=2)

        objective = data_parallel(AutoencoderObjective(vae, cfg.harmon.lambda_vae_kl), env)
        return _fit(objective, vae, optimizer, scheduler, data, mixture, val, reconstruct, cfg, env)

    if cfg.init:
        model = HarmonModel.from_pretrained(cfg.init)
        cfg.harmon = adopt_run_keys(model.cfg.harmon, cfg.harmon)
    else:
        if not cfg.harmon.vae_path:
            raise ValueError("Harmon trains on a KL autoencoder: set harmon.vae_path=<weights file, or the model "
                             "directory of a stage=vae run>")
        texts = [] if cfg.llm.path else _text_corpus(cfg, size)
        model = HarmonModel(cfg, build_text_tokenizer(cfg.llm, texts))
    size = model.cfg.harmon.image_size  # a continued model's own
    model.to(env.device)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model, (Block, type(model.llm.model.layers[0])))
    ratios = image_ratios(cfg.train.ratios or HARMON_RATIOS)
    data, mixture = _stream(cfg, ratios, size, env)
    val = _validation_batches(cfg, [t for t, r in ratios.items() if r > 0], size, count=2)
    optimizer, scheduler = build_optimizer(model.param_groups(), cfg.train, model)
    for group in optimizer.param_groups:
        if group["name"].startswith("vision_head"):
            group["weight_decay"] = 0.0
    prompts = [it["prompt"] for batch in val for it in batch if it["kind"] == "gen"][:4]

    def sample(step: int) -> None:
        if prompts and env.is_main:
            images = HarmonPipeline(model).generate(prompts, seed=cfg.seed)
            grid = torch.stack([ImageTransform(size)(im) for im in images])
            save_samples(grid, out_dir / "samples" / f"t2i_{step:07d}.png")

    return _fit(data_parallel(model, env), model, optimizer, scheduler, data, mixture, val, sample, cfg, env)


# HYDRA-X's tokenizer (DESIGN section 4): stage 1 end to end, stage 2 decoder + GAN on the frozen
# encoder, stage 3 Sem-ViT on standardised latents with Gen-ViT and the decoder frozen.
XTOK_STAGES = ("1", "2", "3")


def _clip_manifests(data: str) -> list[str]:
    """The clip manifests among the sources of ``data``: the ``.jsonl`` files whose records have a
    ``video`` (``shapes make --video`` writes them; their ``image`` is the anchor frame)."""
    specs = [s.strip() for s in data.split(",") if s.strip().endswith(".jsonl")]
    return [s for s in specs if any("video" in r for r in read_manifest(s))]


def _clip_dataset(manifests: Sequence[str], image_size: int, split: str, frames: int) -> Dataset | None:
    """The clips of ``split`` of every clip manifest (all of a manifest that names no splits count as
    "train"), cut to ``frames`` (train.clip_frames) or, when a clip is shorter, to the shortest clip's
    1 + 4k frames (records' ``frames``); None when there are none."""
    from hydra_umm.data.video import ClipDataset

    parts = []
    for path in manifests:
        chosen = split_records(read_manifest(path), split)
        if not chosen:
            continue
        if any("frames" not in r for r in chosen):
            raise ValueError(f"{path}: clip records need their frame count under 'frames'")
        shortest = 1 + 4 * ((min(int(r["frames"]) for r in chosen) - 1) // 4)
        if shortest < frames:
            log.warning("%s: its %s clips have as few as %d frames, fewer than train.clip_frames = %d: the "
                        "tokenizer trains on clips of %d frames", path, split, shortest, frames, shortest)
        parts.append(ClipDataset.from_manifest(path, "t2i", image_size, min(frames, shortest), split))
    if len({part.frames for part in parts}) > 1:
        raise ValueError(f"clip manifests of different lengths {sorted({part.frames for part in parts})} frames: "
                         "give clips of one length")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)) if parts else None


class AlternatingStream:
    """Image and clip batches in turn (image first), as one resumable stream: its state is both
    streams' and whose turn it is. ``skipped``: unreadable images and clips of both."""

    def __init__(self, images, image_source, clips, clip_source):
        self.streams, self.sources, self.turn = (images, clips), (image_source, clip_source), 0

    def __iter__(self) -> "AlternatingStream":
        return self

    def __next__(self) -> dict:
        batch = next(self.streams[self.turn])
        self.turn = 1 - self.turn
        return batch

    def state_dict(self) -> dict:
        return {"turn": self.turn, "images": self.streams[0].state_dict(), "clips": self.streams[1].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.turn = int(state["turn"])
        self.streams[0].load_state_dict(state["images"])
        self.streams[1].load_state_dict(state["clips"])

    @property
    def skipped(self) -> int:
        return sum(map(skipped_count, self.sources))


def _xtok_components(tok: nn.Module, stage: int) -> dict[str, nn.Module]:
    """What trains in ``stage``, by learning-rate group. The temporal patchify layers train with the
    encoder, the latent Decompressor with the decoder, the feature Decompressor with the encoder
    (stage 1) or with Sem-ViT (stage 3)."""
    decoder = nn.ModuleList([tok.decoder, tok.latent_decompressor])
    if stage == 1:
        temporal = [m for m in (tok.temporal_embed, tok.temporal_merge) if m is not None]
        return {"encoder": nn.ModuleList([tok.vit, tok.bottleneck, *temporal, tok.decompressor]), "decoder": decoder}
    if stage == 2:
        return {"decoder": decoder, "discriminator": tok.discriminator}
    return {"sem_vit": nn.ModuleList(tok.sem_vit_modules())}


def train_xtok(cfg: Config) -> Path:
    """Train HYDRA-XTok for ``cfg.stage`` ("1", "2", "3") on images and clips mixed, one batch of
    each in turn; returns the saved model directory. ``data``: the image sources of
    :func:`open_sources` plus at least one clip manifest (a ``.jsonl`` whose records have ``video``;
    its anchor frames also serve as images). Stages 2 and 3 start from ``cfg.init`` (the previous
    stage's HydraXTok directory); stage 3 first records the latent mean/std over
    ``train.latent_stats_images`` images and as many clips."""
    from hydra_umm.models.hydra_xtok import HydraXTok

    _check_stage(cfg.stage, XTOK_STAGES, "HYDRA-XTok")
    stage = int(cfg.stage)
    if stage > 1 and not cfg.init:
        raise ValueError(f"HYDRA-XTok stage {stage} continues stage {stage - 1}: set init=<stage-{stage - 1} model "
                         "directory>")
    if cfg.train.activation_checkpointing:
        raise ValueError("train.activation_checkpointing is not available for HYDRA-XTok (its blocks run through "
                         "spacetime attention, not the timm blocks' forward)")
    manifests = _clip_manifests(cfg.data) if cfg.data else []
    if not manifests:
        raise ValueError(f"HYDRA-XTok trains on images and clips: data={cfg.data!r} holds no clip manifest (a .jsonl "
                         "whose records have 'video', e.g. from `hydra-umm shapes make --video`)")
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    tok = HydraXTok.from_pretrained(cfg.init) if cfg.init else HydraXTok(cfg.tokenizer, cfg.xtok)
    cfg.tokenizer, cfg.xtok = adopt_run_keys(tok.cfg, cfg.tokenizer), adopt_run_keys(tok.xcfg, cfg.xtok)
    tok.requires_grad_(False)
    components = _xtok_components(tok, stage)
    for module in components.values():
        module.requires_grad_(True)
    tok.to(env.device)
    size, train = tok.cfg.image_size, cfg.train
    clip_set = _clip_dataset(manifests, size, "train", cfg.train.clip_frames)
    if clip_set is None:
        raise ValueError(f"no training clips in {manifests}")

    def streams() -> AlternatingStream:
        images, image_source = _stream(cfg, {"t2i": 1.0}, size, env, anchor_frames=True)
        clip_source = MixtureDataset({"t2i": clip_set}, TaskMixture([0, 0, 1], seed=cfg.seed, block=train.mixture_block))
        clips = mixture_stream(clip_source, train.batch_size, env.rank, env.world_size, train.num_workers)
        return AlternatingStream(images, image_source, clips, clip_source)

    if stage == 3:  # Gen-ViT is final: Sem-ViT learns on standardised latents of images and clips
        stats = streams()
        count = 2 * -(-train.latent_stats_images // train.batch_size)
        tok.record_latent_stats(next(stats)["image"].to(env.device) for _ in range(count))
    # image batches leave the Decompressors out of the graph: DDP must not wait for their gradients
    objective = data_parallel(TokenizerObjective(tok, stage), env, find_unused_parameters=True)
    optimizer, scheduler = build_optimizer(components, train, tok)
    data = streams()
    val_clips = _clip_dataset(manifests, size, "val", cfg.train.clip_frames)
    val = _validation_batches(cfg, ["t2i"], size, count=train.batch_size, anchor_frames=True)
    if val_clips is not None:
        items = [val_clips[i] for i in range(min(train.batch_size, len(val_clips)))]
        val.append(items)
    out_dir = Path(cfg.train.out_dir)

    def sample(step: int) -> None:  # input rows above reconstruction rows, for the first image and clip batch
        if not env.is_main:
            return
        for kind in ("image", "clip"):
            batch = next((b for b in val if (b[0]["image"].dim() == 4) == (kind == "clip")), None)
            if batch is not None:
                x = torch.stack([it["image"] for it in batch]).to(env.device)
                g = torch.Generator(device=env.device).manual_seed(cfg.seed)
                recon = tok.decode(tok.encode(x), generator=g)
                rows = 2
                if kind == "clip":  # (B, 3, F, H, W) -> a row of frames per clip
                    x, recon = (v.transpose(1, 2).flatten(0, 1) for v in (x, recon))
                    rows *= len(batch)
                save_samples(torch.cat([x, recon]), out_dir / "samples" / f"{kind}_{step:07d}.png", rows=rows)

    return _fit(objective, tok, optimizer, scheduler, data, data, val, sample, cfg, env)


def train_xtok_stages(cfg: Config, steps: Mapping[str, int]) -> Path:
    """HYDRA-XTok's stages in turn, e.g. ``{"1": 600, "3": 150}`` (stage 3 records the latent
    statistics HYDRA-X's flow needs and fits Sem-ViT to them), each run in
    ``<cfg.train.out_dir>/stage-<s>`` and initialised from the one before (the first from
    ``cfg.init``, if set); a finished run is reused if it was asked for the same settings
    (:mod:`hydra_umm.train.reuse`). Returns the last model directory."""
    previous = cfg.init
    for stage, count in steps.items():
        run = copy.deepcopy(cfg)
        run.stage, run.init, run.train.steps = stage, previous, count
        run.train.warmup = min(run.train.warmup, max(1, count // 10))
        run.train.out_dir = str(Path(cfg.train.out_dir) / f"stage-{stage}")
        previous = str(train_once(run, train_xtok))
    return Path(previous)


RECIPES: dict[str, Callable[[Config], Path]] = {"tokenizer": train_tokenizer, "umm": train_umm, "harmon": train_harmon,
                                                "xtok": train_xtok}
