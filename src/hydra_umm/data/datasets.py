"""Torch datasets that turn image-text data into the items every training recipe reads.

An item is ``{"kind": "und" | "gen" | "text", "image": (3, S, S) tensor in [-1, 1] | None,
"prompt": str, "target": str}``; which item a record becomes is its *task*:

- ``"instruction"`` (instruction understanding): prompt = question, target = answer (kind "und",
  or "text" for a conversation without an image);
- ``"caption"`` (caption understanding): prompt = :data:`DESCRIBE`, target = caption (kind "und");
- ``"t2i"`` (text-to-image): prompt = caption, target = "" (kind "gen").

Sources: image folders and JSONL manifests (:class:`RecordDataset`), LLaVA conversation JSON
(:class:`ConversationDataset`), webdataset tar shards (:class:`ShardDataset`) and the shapes world
rendered in memory (:func:`shapes_records`). An image that cannot be decoded is skipped (the
map-style datasets return the next index instead), counted in ``dataset.skips.count`` (shared by
the DataLoader workers of one process) and logged; it never stops training.
"""

from __future__ import annotations

import abc
import io
import json
import logging
import multiprocessing
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from hydra_umm.data.manifest import check_text, read_manifest, split_records
from hydra_umm.data.shapes import render
from hydra_umm.data.shapes.writer import indexed_splits, scene_record
from hydra_umm.data.transforms import IMAGE_EXTENSIONS, ImageTransform, to_rgb

log = logging.getLogger(__name__)

# The mixture's tasks. The first three are HYDRA's image tasks (``train.ratios`` of an image model
# gives them in this order); the rest are HYDRA-X's: text alone, clips and edits.
TASKS = ("instruction", "caption", "t2i", "text", "video_caption", "video_instruction", "video_t2i", "edit")
IMAGE_TASKS = TASKS[:3]
RECORD_TASKS = ("instruction", "caption", "t2i", "text")  # what image-caption(-QA) records give
DESCRIBE = "Describe the image."
IMAGE_TOKEN = "<image>"  # LLaVA's placeholder for the image inside the first human turn


class UnreadableImage(Exception):
    """An image file (or bytes) that PIL cannot decode."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def load_image(source: Union[str, Path, bytes, Image.Image], name: str = "") -> Image.Image:
    """Decode a path, raw bytes or PIL image fully into 8-bit RGB (:func:`to_rgb`); raise :class:`UnreadableImage`."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()  # decode now: a truncated file fails here, not in the transform
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(name, f"{type(e).__name__}: {e}") from None


def read_caption(path: Path) -> str:
    """The stripped UTF-8 text of a caption file; ValueError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the caption is not UTF-8 text ({e.reason} at byte {e.start})") from None


class SkipCounter:
    """How many images were skipped as unreadable; one integer shared by the DataLoader workers
    that the owning process starts (a ``multiprocessing.Value``)."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, error: UnreadableImage) -> None:
        with self._value.get_lock():
            self._value.value += 1
            count = self._value.value
        log.warning("skipped unreadable image %s (%s); %d skipped so far", error.source, error.reason, count)

    @property
    def count(self) -> int:
        return int(self._value.value)


def check_task(task: str, allowed: Sequence[str]) -> None:
    if task not in allowed:
        raise ValueError(f"unknown task {task!r}; this data set supports {tuple(allowed)}")


def question_prompt(qa: dict) -> str:
    """The prompt of a QA item, for training and evaluation alike: the question, and for multiple
    choice (``choices``) a line listing them."""
    if qa.get("choices"):
        return f"{qa['question']}\nChoices: {', '.join(map(str, qa['choices']))}"
    return qa["question"]


def caption_item(image, caption: str, task: str) -> dict:
    """The item of an image-caption pair (or a clip and its caption) for the task "caption", "t2i" or
    "text" (the caption alone, as language-model data)."""
    if task == "caption":
        return {"kind": "und", "image": image, "prompt": DESCRIBE, "target": caption}
    if task == "text":
        return {"kind": "text", "image": None, "prompt": "", "target": caption}
    return {"kind": "gen", "image": image, "prompt": caption, "target": ""}


def qa_item(image, qa: dict) -> dict:
    """The understanding item of one QA pair about an image or a clip."""
    return {"kind": "und", "image": image, "prompt": question_prompt(qa), "target": str(qa["answer"])}


class ImageItemDataset(Dataset, abc.ABC):
    """Map-style base: ``item(i)`` may raise :class:`UnreadableImage`; ``__getitem__`` then counts
    it and moves on to the next index (cyclically), so a batch is always full."""

    def __init__(self, image_size: int):
        self.transform = ImageTransform(image_size)
        self.skips = SkipCounter()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def item(self, index: int) -> dict:
        """The item at ``index`` (raises UnreadableImage for an image that cannot be decoded)."""

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} items")
        for offset in range(n):
            try:
                return self.item((index + offset) % n)
            except UnreadableImage as e:
                self.skips.add(e)
        raise ValueError(f"{type(self).__name__}: none of its {n} items has a readable image")


class RecordDataset(ImageItemDataset):
    """Image-caption(-QA) records as written by :func:`hydra_umm.data.manifest.write_manifest`
    (``image`` a path or an in-memory PIL image). The task "instruction" makes one item per QA
    pair (multiple-choice questions list their choices after the question); "text" the caption alone."""

    def __init__(self, records: Sequence[dict], task: str, image_size: int):
        super().__init__(image_size)
        check_task(task, RECORD_TASKS)
        for i, r in enumerate(records):
            if "image" not in r or "caption" not in r:
                raise ValueError(f"record {i} lacks 'image' or 'caption': keys {sorted(r)}")
        self.records, self.task = list(records), task
        if task == "instruction":
            self.index = [(i, j) for i, r in enumerate(self.records) for j in range(len(r.get("qa", [])))]
            if not self.index:
                raise ValueError("task 'instruction' needs records with a 'qa' list; none has one")
        else:
            self.index = [(i, -1) for i in range(len(self.records))]

    @classmethod
    def from_manifest(cls, path: Union[str, Path], task: str, image_size: int, split: str | None = None):
        """A JSONL manifest, optionally only the records of one ``split`` (:func:`split_records`)."""
        records = split_records(read_manifest(path), split)
        if not records:
            raise ValueError(f"{path}: no records" + (f" in split {split!r}" if split else ""))
        return cls(records, task, image_size)

    @classmethod
    def from_folder(cls, root: Union[str, Path], task: str, image_size: int):
        """Every image under ``root`` (recursively); its caption is the text (UTF-8) of the file with
        the same stem and suffix ``.txt`` beside it, or "" when there is none (tokenizer data)."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        records = []
        for p in paths:
            text = p.with_suffix(".txt")
            records.append({"image": str(p), "caption": read_caption(text) if text.is_file() else ""})
        return cls(records, task, image_size)

    def __len__(self) -> int:
        return len(self.index)

    def item(self, index: int) -> dict:
        i, j = self.index[index]
        record = self.records[i]
        if self.task == "text":
            return caption_item(None, record["caption"], "text")
        image = self.transform(load_image(record["image"]))
        if self.task != "instruction":
            return caption_item(image, record["caption"], self.task)
        return qa_item(image, record["qa"][j])


class EditDataset(ImageItemDataset):
    """Edit records ``{"source", "target"}`` (paths or in-memory PIL images) and ``instruction``, as
    "edit" items (``image`` the target, ``source`` the source)."""

    def __init__(self, records: Sequence[dict], image_size: int):
        super().__init__(image_size)
        for i, r in enumerate(records):
            missing = [k for k in ("source", "target", "instruction") if k not in r]
            if missing:
                raise ValueError(f"edit record {i} lacks {missing}: keys {sorted(r)}")
        if not records:
            raise ValueError("no edit records")
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def item(self, index: int) -> dict:
        r = self.records[index]
        return {"kind": "edit", "source": self.transform(load_image(r["source"])),
                "image": self.transform(load_image(r["target"])), "prompt": r["instruction"], "target": ""}


def shapes_records(image_size: int, n: int = 1000, seed: int = 0, split: str = "train") -> list[dict]:
    """The shapes world in memory, rendered at ``image_size``: the records of ``split`` (scenes,
    captions, questions, ids) that :func:`hydra_umm.data.shapes.make_dataset` with the same n and
    seed writes to disk, with PIL images in place of paths. One list serves every task:
    ``RecordDataset(records, task, image_size)``."""
    splits = indexed_splits(n, seed)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; splits: {list(splits)}")
    return [{**scene_record(scene, split, index, seed, image_size), "image": render(scene, image_size)}
            for index, scene in splits[split]]


class ConversationDataset(ImageItemDataset):
    """LLaVA-style instruction data: a JSON list of ``{"id", "image" (relative to ``image_root``,
    optional), "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt",
    "value": ...}, ...]}``. Each gpt turn is one item; its prompt is the human turn before it,
    preceded by the earlier turns of the conversation (one per line) so that follow-up questions
    keep their context. A conversation without an image gives items of kind "text"."""

    def __init__(self, path: Union[str, Path], image_root: Union[str, Path], image_size: int):
        super().__init__(image_size)
        path, self.image_root = Path(path), Path(image_root)
        if not path.is_file():
            raise FileNotFoundError(f"conversation file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
        self.records: list[tuple[str | None, list[str]]] = []  # (image path, turn texts)
        self.index: list[tuple[int, int]] = []  # (record, index of the gpt turn)
        for n, record in enumerate(data):
            where = f"{path}: conversation {n} (id {record.get('id', '?')!r})" if isinstance(record, dict) else f"{path}: entry {n}"
            check_text(record, where)
            image, turns = self._parse(record, where)
            self.index += [(len(self.records), k) for k in range(1, len(turns), 2)]
            self.records.append((image, turns))
        if not self.index:
            raise ValueError(f"{path}: no conversations")

    @staticmethod
    def _parse(record: object, where: str) -> tuple[str | None, list[str]]:
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise ValueError(f"{where}: needs a 'conversations' list")
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{where}: 'image' must be one path (multi-image records are not supported)")
        turns = record["conversations"]
        if len(turns) < 2 or len(turns) % 2:
            raise ValueError(f"{where}: needs alternating human/gpt turns, got {len(turns)} turns")
        texts = []
        for k, turn in enumerate(turns):
            expected = "human" if k % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
                raise ValueError(f"{where}: turn {k} must be {{'from': {expected!r}, 'value': str}}")
            texts.append(turn["value"].replace(IMAGE_TOKEN, "").strip())
        return image, texts

    def __len__(self) -> int:
        return len(self.index)

    def item(self, index: int) -> dict:
        r, k = self.index[index]
        image, turns = self.records[r]
        prompt = "\n".join(turns[:k])
        if image is None:
            return {"kind": "text", "image": None, "prompt": prompt, "target": turns[k]}
        pixels = self.transform(load_image(self.image_root / image))
        return {"kind": "und", "image": pixels, "prompt": prompt, "target": turns[k]}


class ShardDataset(IterableDataset):
    """Webdataset tar shards of image-caption pairs for large-scale training: an image under
    ``jpg``/``jpeg``/``png``/``webp`` and its caption under ``txt`` (or ``json`` with a "caption").
    Shards are split across ranks and DataLoader workers; the stream passes over them once, in
    order (repeat or shuffle the shard list outside). Tasks "caption" and "t2i"."""

    IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, urls: Union[str, Sequence[str]], task: str, image_size: int):
        check_task(task, ("caption", "t2i"))
        self.urls, self.task = urls, task
        self.transform = ImageTransform(image_size)
        self.skips = SkipCounter()

    def __iter__(self) -> Iterator[dict]:
        shards = wds.WebDataset(
            self.urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        for sample in shards:
            name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            try:
                data = next((sample[k] for k in self.IMAGE_KEYS if k in sample), None)
                if data is None:
                    raise UnreadableImage(name, f"no image under {self.IMAGE_KEYS}; keys {sorted(sample)}")
                image = self.transform(load_image(data, name))
                caption = self._caption(sample, name)
            except UnreadableImage as e:
                self.skips.add(e)
                continue
            yield caption_item(image, caption, self.task)

    @staticmethod
    def _caption(sample: dict, name: str) -> str:
        """The sample's caption; a sample without a readable one is skipped and counted like a bad image."""
        try:
            if "txt" in sample:
                return sample["txt"].decode("utf-8").strip()
            if "json" in sample:
                meta = json.loads(sample["json"])
                if "caption" in meta:
                    return str(meta["caption"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UnreadableImage(name, f"unreadable caption ({type(e).__name__}: {e})") from None
        raise UnreadableImage(name, "no caption (a 'txt' entry or a 'json' entry with a 'caption')")


def collate_items(items: Sequence[dict]) -> dict:
    """Items -> a batch: ``image`` (B, ...) stacked with zeros where an item has none when every
    image has one shape, else a list (None where an item has none: images with clips), ``has_image``
    (B,) bool, lists of ``kind``, ``prompt`` and ``target``, and for edits ``source`` (a list, None
    for the other items)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(it["image"].shape) for it in items if it["image"] is not None}
    has_image = torch.tensor([it["image"] is not None for it in items])
    if len(shapes) == 1:
        (shape,) = shapes
        image = torch.stack([it["image"] if it["image"] is not None else torch.zeros(shape) for it in items])
    else:
        image = [it["image"] for it in items] if shapes else None
    batch = {
        "kind": [it["kind"] for it in items],
        "image": image,
        "has_image": has_image,
        "prompt": [it["prompt"] for it in items],
        "target": [it["target"] for it in items],
    }
    if any("source" in it for it in items):
        batch["source"] = [it.get("source") for it in items]
    return batch
