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
from hydra_umm.data.shapes.world import MAX_OBJECTS
from hydra_umm.data.transforms import ImageTransform
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

class SemanticTeacher(nn.Module):
    """The tokenizer's ViT (``self.vit``, what gets saved) with one linear head per target."""

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
        inputs = {"pooled": tokens.mean(1), "tokens": tokens}
        out = {}
        for name, (source, _) in HEADS.items():
            x = inputs[source]  # (B, D) or (B, N, D)
            out[name] = self.heads[name](x).view(*x.shape[:-1], *self.logit_shapes[name])
        return out

    @staticmethod
    def losses(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss_<target>`` per head (cross-entropy for counts and cells, binary cross-entropy
        for presences, each a mean over labels and batch) and ``loss``, their sum."""
        losses = {}
        for name, (_, classes) in HEADS.items():
            x, y = logits[name], targets[name]
            if classes:
                losses[f"loss_{name}"] = F.cross_entropy(x.reshape(-1, classes), y.reshape(-1))
            else:
                losses[f"loss_{name}"] = F.binary_cross_entropy_with_logits(x, y)
        losses["loss"] = sum(losses.values())
        return losses

    @staticmethod
    def predict(logits: dict[str, Tensor]) -> dict[str, Tensor]:
        """Predicted targets, in the form :func:`scene_targets` gives them."""
        return {
            name: logits[name].argmax(-1) if classes else (logits[name] > 0).float()
            for name, (_, classes) in HEADS.items()
        }

    @staticmethod
    def accuracy(predictions: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, float]:
        """``acc_<target>``: the fraction of labels predicted exactly, and ``accuracy``, their mean
        over targets."""
        acc = {f"acc_{k}": (predictions[k] == targets[k]).float().mean().item() for k in HEADS}
        acc["accuracy"] = sum(acc.values()) / len(acc)
        return acc

def majority(targets: dict[str, Tensor]) -> dict[str, Tensor]:
    """The most frequent value of every label over a batch of targets, as a batch of one."""
    return {k: v.mode(dim=0).values.unsqueeze(0) for k, v in targets.items()}

@torch.no_grad()
def evaluate(model: SemanticTeacher, images: Tensor, targets: dict[str, Tensor], batch_size: int) -> dict[str, float]:
    """Accuracies (:meth:`SemanticTeacher.accuracy`) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    logits = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    model.train(was_training)
    predictions = SemanticTeacher.predict({k: torch.cat([x[k] for x in logits]) for k in HEADS})
    return SemanticTeacher.accuracy(predictions, targets)

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
    for name, value in (("steps", steps), ("n_scenes", n_scenes), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_images, train_targets = shapes_split(cfg.tokenizer, n_scenes, cfg.seed, "train")
    val_images, val_targets = shapes_split(cfg.tokenizer, n_scenes, cfg.seed, "val")
    baseline = SemanticTeacher.accuracy(
        {k: v.expand_as(val_targets[k]) for k, v in majority(train_targets).items()}, val_targets
    )

    model = SemanticTeacher(cfg.tokenizer)
    val_init = evaluate(model, val_images, val_targets, batch_size)
    tc = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    schedule = warmup_cosine(optimizer, max(1, steps // 10), steps)
    model.train()
    bar = tqdm(range(steps), desc="teacher", unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(len(train_images), (batch_size,), generator=generator)
        losses = model.losses(model(train_images[index]), {k: v[index] for k, v in train_targets.items()})
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
    bar.close()

    metrics = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "n_train": len(train_images), "n_val": len(val_images),
        "final_loss": losses["loss"].item(),
        "val_init": val_init, "val": evaluate(model, val_images, val_targets, batch_size), "baseline": baseline,
        "seconds": time.perf_counter() - start, "tokenizer": to_dict(cfg.tokenizer),
    }
    save_file({k: v.contiguous() for k, v in model.vit.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
