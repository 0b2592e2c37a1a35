"""The semantic teacher: a ViT of the tokenizer's own architecture trained with supervision on the
shapes world's scene attributes, the stand-in for InternViT (which cannot be downloaded here).

HYDRA-TOK is initialised from and distilled against it, so its features should encode what the
shapes world asks HYDRA to understand and to generate: *what* (which colours, shapes and
colour-shape pairs), *how many* (objects in all, and of each pair) and *where* (the colour and
shape of the object under each patch).

    images (B, 3, S, S) in [-1, 1] -> ViT -> patch tokens (B, N, D) -> LayerNorm
      mean over tokens (B, D)   -> heads: pair_count, count, color, shape
      every token (B, N, D)     -> heads: cell_color, cell_shape

Only the ViT is kept (``teacher.safetensors``, timm key names): ``HydraTok.load_internvit`` reads
it like an InternViT checkpoint.

HYDRA-X's video teacher (``train_video_teacher``, below) is trained the same way on the shapes world
in motion, with clip targets; its ViT goes to ``video_teacher.safetensors`` for
``xtok.video_teacher_weights``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from hydra_umm.config import Config, TokenizerConfig, to_dict
from hydra_umm.data.datasets import shapes_records
from hydra_umm.data.shapes import COLORS, SHAPES, Scene
from hydra_umm.data.shapes.motion import DIRECTIONS, EVENTS, MAX_CLIP_OBJECTS, Clip, clip_records
from hydra_umm.data.shapes.world import MAX_OBJECTS
from hydra_umm.data.transforms import ImageTransform
from hydra_umm.data.video import clip_to_tensor
from hydra_umm.models.hydra_xtok import VideoTeacher
from hydra_umm.models.vit import InputNormalization, build_vit, check_image_size
from hydra_umm.train.schedule import warmup_cosine

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
WEIGHTS_FILE, METRICS_FILE = "teacher.safetensors", "teacher.json"

# target -> (features its head reads: "pooled" | "tokens", classes per label; 0 = binary presence)
HEADS: dict[str, tuple[str, int]] = {
    "pair_count": ("pooled", MAX_OBJECTS + 1),  # (6 * 5,) objects of each colour-shape pair
    "count": ("pooled", MAX_OBJECTS + 1),  # () objects in the scene
    "color": ("pooled", 0),  # (6,) colour present
    "shape": ("pooled", 0),  # (5,) shape present
    "cell_color": ("tokens", len(COLOR_NAMES) + 1),  # (grid^2,) 0 = background, 1 + colour index
    "cell_shape": ("tokens", len(SHAPES) + 1),  # (grid^2,) 0 = background, 1 + shape index
}

def scene_targets(scene: dict, grid: int) -> dict[str, Tensor]:
    """The supervised targets of a scene dict (``Scene.to_dict()``, as in a shapes record's "scene").

    Position: the image is cut into grid x grid cells (the ViT's patches when grid = S / patch),
    numbered row-major from the top left (y down, x right); a cell takes the colour and shape of
    the object whose box holds the cell's centre (boxes never overlap), else 0 (background).
    Counts and cells are long tensors (class indices), presences float 0/1.
    """
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    objects = Scene.from_dict(scene).objects  # checks every colour and shape name
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"a scene has at most {MAX_OBJECTS} objects, got {len(objects)}")
    pairs = torch.zeros(len(COLOR_NAMES), len(SHAPES), dtype=torch.long)
    cell_color = torch.zeros(grid, grid, dtype=torch.long)
    cell_shape = torch.zeros(grid, grid, dtype=torch.long)
    centres = (torch.arange(grid) + 0.5) / grid
    for o in objects:
        c, s = COLOR_NAMES.index(o.color), SHAPES.index(o.shape)
        pairs[c, s] += 1
        x0, y0, x1, y1 = o.box
        inside = ((centres >= y0) & (centres <= y1))[:, None] & ((centres >= x0) & (centres <= x1))[None, :]
        cell_color[inside], cell_shape[inside] = c + 1, s + 1
    return {
        "pair_count": pairs.flatten(),
        "count": torch.tensor(len(objects)),
        "color": (pairs.sum(1) > 0).float(),
        "shape": (pairs.sum(0) > 0).float(),
        "cell_color": cell_color.flatten(),
        "cell_shape": cell_shape.flatten(),
    }

def collate_targets(targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """A list of :func:`scene_targets` -> one batch (B, ...) per target."""
    return {name: torch.stack([t[name] for t in targets]) for name in HEADS}

Heads = dict[str, tuple[str, int]]


def head_losses(logits: dict[str, Tensor], targets: dict[str, Tensor], heads: Heads) -> dict[str, Tensor]:
    """``loss_<target>`` per head (cross-entropy for counts and cells, binary cross-entropy for
    presences, each a mean over labels and batch) and ``loss``, their sum."""
    losses = {}
    for name, (_, classes) in heads.items():
        x, y = logits[name], targets[name]
        if classes:
            losses[f"loss_{name}"] = F.cross_entropy(x.reshape(-1, classes), y.reshape(-1))
        else:
            losses[f"loss_{name}"] = F.binary_cross_entropy_with_logits(x, y)
    losses["loss"] = sum(losses.values())
    return losses


def head_predictions(logits: dict[str, Tensor], heads: Heads) -> dict[str, Tensor]:
    """Class indices for counts and cells, 0/1 for presences."""
    return {name: logits[name].argmax(-1) if classes else (logits[name] > 0).float()
            for name, (_, classes) in heads.items()}


def head_accuracy(predictions: dict[str, Tensor], targets: dict[str, Tensor], heads: Heads) -> dict[str, float]:
    """``acc_<target>``: the fraction of labels predicted exactly, and ``accuracy``, their mean
    over targets."""
    acc = {f"acc_{k}": (predictions[k] == targets[k]).float().mean().item() for k in heads}
    acc["accuracy"] = sum(acc.values()) / len(acc)
    return acc


def apply_heads(heads: nn.ModuleDict, logit_shapes: dict[str, tuple[int, ...]], spec: Heads,
                inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Logits per target from ``inputs["pooled"]`` (B, D) or ``inputs["tokens"]`` (B, ..., D):
    (B, [...,] *labels, classes) for counts and cells, (B, *labels) for presences."""
    out = {}
    for name, (source, _) in spec.items():
        x = inputs[source]
        out[name] = heads[name](x).view(*x.shape[:-1], *logit_shapes[name])
    return out


class SemanticTeacher(nn.Module):
    """The tokenizer's ViT (``self.vit``, what gets saved) with one linear head per target."""

    head_spec = HEADS

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = build_vit(cfg)
        self.grid = cfg.image_size // cfg.patch_size  # patches per side: the position targets' cells
        self.normalise = InputNormalization(cfg)  # the ViT sees exactly the inputs HydraTok gives it
        self.norm = nn.LayerNorm(cfg.width)  # InternViT has no final norm
        empty = scene_targets({"objects": []}, self.grid)
        self.logit_shapes: dict[str, tuple[int, ...]] = {}
        for name, (source, classes) in HEADS.items():
            labels = () if source == "tokens" else tuple(empty[name].shape)  # tokens: one label each
            self.logit_shapes[name] = labels + ((classes,) if classes else ())
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.width, math.prod(s)) for k, s in self.logit_shapes.items()})

    def features(self, images: Tensor) -> Tensor:
        """Patch tokens (B, N, D) of the ViT's last block (class token dropped), as HydraTok normalises."""
        check_image_size(images, self.cfg)
        tokens = self.vit.forward_features(self.normalise(images))
        return tokens[:, self.vit.num_prefix_tokens :]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per target: (B, *labels, classes) for counts and cells, (B, *labels) for presences."""
        tokens = self.norm(self.features(images))  # (B, N, D)
        return apply_heads(self.heads, self.logit_shapes, HEADS, {"pooled": tokens.mean(1), "tokens": tokens})

    @staticmethod
    def losses(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss_<target>`` per head and ``loss``, their sum (:func:`head_losses`)."""
        return head_losses(logits, targets, HEADS)

    @staticmethod
    def accuracy(predictions: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, float]:
        """``acc_<target>`` and ``accuracy`` (:func:`head_accuracy`)."""
        return head_accuracy(predictions, targets, HEADS)

def majority(targets: dict[str, Tensor]) -> dict[str, Tensor]:
    """The most frequent value of every label over a batch of targets, as a batch of one."""
    return {k: v.mode(dim=0).values.unsqueeze(0) for k, v in targets.items()}

@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: dict[str, Tensor], batch_size: int) -> dict[str, float]:
    """Accuracies (:func:`head_accuracy`) of a teacher classifier (``SemanticTeacher`` on images,
    ``VideoClassifier`` on clips) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    logits = [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    model.train(was_training)
    spec = model.head_spec
    predictions = head_predictions({k: torch.cat([x[k] for x in logits]) for k in spec}, spec)
    return head_accuracy(predictions, targets, spec)


def optimise(model: nn.Module, inputs: Tensor, targets: dict[str, Tensor], cfg: Config, steps: int, batch_size: int,
             lr: float, progress: bool, desc: str) -> list[float]:
    """Train a teacher classifier on random batches of (``inputs``, ``targets``), seeded by
    ``cfg.seed``: AdamW (cfg.train's betas, weight decay and gradient clipping) at peak ``lr``,
    linear warm-up over the first tenth of the steps, then cosine decay to 0. Returns the loss of
    every step."""
    tc = cfg.train
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    schedule = warmup_cosine(optimizer, max(1, steps // 10), steps)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = head_losses(model(inputs[index]), {k: v[index] for k, v in targets.items()}, model.head_spec)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def _check_run(steps: int, count: int, batch_size: int, lr: float, what: str) -> None:
    for name, value in (("steps", steps), (what, count), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")


def shapes_split(cfg: TokenizerConfig, n_scenes: int, seed: int, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Images (M, 3, S, S) in [-1, 1] and targets (cells = patches) of one split of the in-memory
    shapes world."""
    records = shapes_records(cfg.image_size, n_scenes, seed, split)
    transform = ImageTransform(cfg.image_size)
    images = torch.stack([transform(r["image"]) for r in records])
    return images, collate_targets([scene_targets(r["scene"], cfg.image_size // cfg.patch_size) for r in records])

def train_teacher(
    cfg: Config, out: Path, steps: int, n_scenes: int, batch_size: int, lr: float, progress: bool = True
) -> dict:
    """Train a :class:`SemanticTeacher` of ``cfg.tokenizer``'s size on the train split of
    ``n_scenes`` shapes-world scenes (seed ``cfg.seed``) and write to ``out``:

    - ``teacher.safetensors``: the ViT's state dict alone (timm key names), for
      ``cfg.tokenizer.teacher_weights`` / ``HydraTok.load_internvit``;
    - ``teacher.json``: the returned metrics: val accuracies at initialisation (``val_init``) and
      after training (``val``), the majority-label baseline on val (``baseline``), the final loss,
      and the run's size and seconds.

    AdamW (cfg.train's betas, weight decay and gradient clipping) at peak ``lr``, linear warm-up
    over the first tenth of the steps, then cosine decay to 0.
    """
    _check_run(steps, n_scenes, batch_size, lr, "n_scenes")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train_images, train_targets = shapes_split(cfg.tokenizer, n_scenes, cfg.seed, "train")
    val_images, val_targets = shapes_split(cfg.tokenizer, n_scenes, cfg.seed, "val")
    baseline = SemanticTeacher.accuracy(
        {k: v.expand_as(val_targets[k]) for k, v in majority(train_targets).items()}, val_targets
    )

    model = SemanticTeacher(cfg.tokenizer)
    val_init = evaluate(model, val_images, val_targets, batch_size)
    losses = optimise(model, train_images, train_targets, cfg, steps, batch_size, lr, progress, "teacher")

    metrics = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "n_train": len(train_images), "n_val": len(val_images),
        "final_loss": losses[-1],
        "val_init": val_init, "val": evaluate(model, val_images, val_targets, batch_size), "baseline": baseline,
        "seconds": time.perf_counter() - start, "tokenizer": to_dict(cfg.tokenizer),
    }
    save_file({k: v.contiguous() for k, v in model.vit.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ------------------------------------------------------------------------------ video teacher
#
# HYDRA-X distils the Decompressor's per-frame features against a video teacher that sees frames
# 1..T of a clip at once (``HydraXTok``'s VideoTeacher). On the shapes world in motion it learns
# what only several frames show: where movers go, what happens (moves, stays, appears, changes
# colour), the state at the end, and per frame the colour under every patch.
#
#     frames (B, 3, T, S, S) -> VideoTeacher (full spacetime attention, 3D RoPE) -> (B, T, N, D)
#       -> LayerNorm; mean over frames and tokens (B, D) -> heads direction, event, end_color,
#          movers, end_count; every token (B, T, N, D) -> head cell_color

VIDEO_WEIGHTS_FILE, VIDEO_METRICS_FILE = "video_teacher.safetensors", "video_teacher.json"

# target -> (features its head reads, classes per label; 0 = binary presence), over frames 1..T
VIDEO_HEADS: Heads = {
    "direction": ("pooled", 0),  # (4,) a mover goes left / right / up / down (DIRECTIONS)
    "event": ("pooled", 0),  # (4,) some object moves / stays still / appears / changes colour (EVENTS)
    "end_color": ("pooled", 0),  # (6,) colour present in the last frame
    "movers": ("pooled", MAX_CLIP_OBJECTS + 1),  # () objects that move
    "end_count": ("pooled", MAX_CLIP_OBJECTS + 1),  # () objects visible in the last frame
    "cell_color": ("tokens", len(COLOR_NAMES) + 1),  # (T, grid^2) per frame, as in scene_targets
}
VIDEO_LABELS = {"direction": (len(DIRECTIONS),), "event": (len(EVENTS),), "end_color": (len(COLOR_NAMES),),
                "movers": (), "end_count": (), "cell_color": ()}  # the token head: one label per token


def clip_targets(clip: dict, grid: int) -> dict[str, Tensor]:
    """The supervised targets of a clip dict (``Clip.to_dict()``, a clip record's "clip") over the
    frames the video teacher sees, 1..T (cells as :func:`scene_targets`, frame by frame)."""
    clip = Clip.from_dict(clip)
    movers = [o for o in clip.objects if o.event == "moves"]
    end = clip.scene(clip.frames - 1)
    return {
        "direction": torch.tensor([float(any(clip.direction(o) == d for o in movers)) for d in DIRECTIONS]),
        "event": torch.tensor([float(any(o.event == e for o in clip.objects)) for e in EVENTS]),
        "end_color": scene_targets(end.to_dict(), grid)["color"],
        "movers": torch.tensor(len(movers)),
        "end_count": torch.tensor(len(end.objects)),
        "cell_color": torch.stack([scene_targets(clip.scene(t).to_dict(), grid)["cell_color"]
                                   for t in range(1, clip.frames)]),
    }


class VideoClassifier(nn.Module):
    """HYDRA-XTok's :class:`VideoTeacher` (``self.teacher``, whose ViT is what gets saved), made
    trainable, with one linear head per clip target."""

    head_spec = VIDEO_HEADS

    def __init__(self, cfg: TokenizerConfig, rope_theta: float):
        super().__init__()
        self.teacher = VideoTeacher(cfg, rope_theta)  # built frozen, as HydraXTok holds it
        self.teacher.vit.requires_grad_(True)
        self.norm = nn.LayerNorm(cfg.width)
        self.logit_shapes = {k: VIDEO_LABELS[k] + ((classes,) if classes else ()) for k, (_, classes) in
                             VIDEO_HEADS.items()}
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.width, math.prod(s)) for k, s in self.logit_shapes.items()})

    def forward(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (B, 3, T, S, S) in [-1, 1] -> logits per target."""
        tokens = self.norm(self.teacher(frames))  # (B, T, N, D)
        return apply_heads(self.heads, self.logit_shapes, VIDEO_HEADS,
                           {"pooled": tokens.mean((1, 2)), "tokens": tokens})


def shapes_clip_split(cfg: TokenizerConfig, n_clips: int, frames: int, seed: int,
                      split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Frames 1..T (M, 3, T, S, S) in [-1, 1] of one split of the in-memory shapes world in motion
    (clips of ``frames`` = 1 + T frames) and their :func:`clip_targets` (cells = patches)."""
    records = clip_records(cfg.image_size, n_clips, frames, seed, split)
    clips = torch.stack([clip_to_tensor(r["video"])[:, 1:] for r in records])
    grid = cfg.image_size // cfg.patch_size
    targets = [clip_targets(r["clip"], grid) for r in records]
    return clips, {name: torch.stack([t[name] for t in targets]) for name in VIDEO_HEADS}


def train_video_teacher(cfg: Config, out: Path, steps: int, n_clips: int, frames: int, batch_size: int, lr: float,
                        progress: bool = True) -> dict:
    """Train a :class:`VideoClassifier` of ``cfg.tokenizer``'s size (``cfg.xtok.rope_theta``) on
    the train split of ``n_clips`` shapes clips of ``frames`` frames (seed ``cfg.seed``) and write
    to ``out``:

    - ``video_teacher.safetensors``: the VideoTeacher's ViT, for ``xtok.video_teacher_weights``;
    - ``video_teacher.json``: the returned metrics: val accuracies at initialisation and after
      training, the majority-label baseline, the loss of every step, the run's size and seconds.

    Optimisation as :func:`train_teacher` (:func:`optimise`).
    """
    _check_run(steps, n_clips, batch_size, lr, "n_clips")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train_clips, train_targets = shapes_clip_split(cfg.tokenizer, n_clips, frames, cfg.seed, "train")
    val_clips, val_targets = shapes_clip_split(cfg.tokenizer, n_clips, frames, cfg.seed, "val")
    baseline = head_accuracy({k: v.expand_as(val_targets[k]) for k, v in majority(train_targets).items()},
                             val_targets, VIDEO_HEADS)

    model = VideoClassifier(cfg.tokenizer, cfg.xtok.rope_theta)
    val_init = evaluate(model, val_clips, val_targets, batch_size)
    losses = optimise(model, train_clips, train_targets, cfg, steps, batch_size, lr, progress, "video teacher")

    metrics = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "frames": frames, "n_train": len(train_clips),
        "n_val": len(val_clips), "losses": losses,
        "val_init": val_init, "val": evaluate(model, val_clips, val_targets, batch_size), "baseline": baseline,
        "seconds": time.perf_counter() - start, "tokenizer": to_dict(cfg.tokenizer), "xtok": to_dict(cfg.xtok),
    }
    vit = model.teacher.vit.state_dict()
    save_file({k: v.contiguous() for k, v in vit.items()}, str(out / VIDEO_WEIGHTS_FILE))
    (out / VIDEO_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
