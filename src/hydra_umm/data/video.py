"""Clips: frame I/O and a data set of clip records. A clip is a float tensor (3, 1 + T, H, W) in
[-1, 1] (DESIGN section 4: the first frame is the anchor, T a multiple of 4).

On disk a clip is a folder of frames (image files in name order; written as ``00000.png``, ...)
or a video file read and written through PyAV (H.264 in an mp4 when writing). A clip record is an
image-manifest record (``data.manifest``) plus ``video`` (the clip's path, or in memory a list of
PIL frames) and optionally ``frames``. A clip that cannot be decoded raises ``UnreadableImage``,
so :class:`ClipDataset` skips and counts it exactly as the image data sets do.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence, Union

import av
import numpy as np
import torch
from PIL import Image

from hydra_umm.data.datasets import ImageItemDataset, UnreadableImage, caption_item, check_task, load_image, qa_item
from hydra_umm.data.manifest import read_manifest, split_records
from hydra_umm.data.transforms import IMAGE_EXTENSIONS, resize_crop, to_pil, to_tensor

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
FPS = 8
CRF = 12  # H.264 quality: 0 is lossless, 23 is x264's default; lower is better and larger
CLIP_TASKS = ("caption", "t2i", "instruction")


def check_frame_count(frames: int) -> None:
    """A clip has 1 + 4k frames (1, 5, 9, 17, ...): the anchor plus T = 4k frames."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"a clip needs 1 + 4k frames (1, 5, 9, 13, 17, ...), got {frames}")


def clip_to_tensor(frames: Sequence[Image.Image]) -> torch.Tensor:
    """RGB frames of one size -> (3, F, H, W) in [-1, 1]."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    return to_tensor(list(frames)).transpose(0, 1)


def tensor_to_frames(clip: torch.Tensor) -> list[Image.Image]:
    """(3, F, H, W) in [-1, 1] -> F RGB PIL images."""
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected a clip (3, F, H, W), got shape {tuple(clip.shape)}")
    return to_pil(clip.transpose(0, 1))


def write_clip(frames: Sequence[Image.Image], path: str | Path, fps: int = FPS, crf: int = CRF) -> Path:
    """Write frames as a video file when ``path`` ends in a video extension (H.264, yuv420p, in an
    mp4 container for ``.mp4``), else as ``path/00000.png, 00001.png, ...``. Returns ``path``."""
    path = Path(path)
    if not frames:
        raise ValueError("a clip needs at least one frame")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"frames of different sizes in one clip: {sorted(sizes)}")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        path.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            frame.convert("RGB").save(path / f"{t:05d}.png")
        return path
    (width, height), = sizes
    if width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs even frame sides, got {width}x{height}; write a PNG folder instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame.convert("RGB")), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    return path


def read_frames(path: str | Path) -> list[Image.Image]:
    """The RGB frames of a clip folder (image files in name order) or a video file; raises
    ``UnreadableImage`` for a clip that cannot be decoded and ``FileNotFoundError`` for none."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise UnreadableImage(str(path), f"no frames ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return [load_image(p) for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"no clip (a folder of frames or a video file) at {path}")
    try:
        with av.open(str(path)) as container:
            frames = [Image.fromarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        raise UnreadableImage(str(path), f"{type(e).__name__}: {e}") from None
    if not frames:
        raise UnreadableImage(str(path), "no decodable video frames")
    return frames


def sample_frames(frames: Sequence[Image.Image], count: int) -> list[Image.Image]:
    """``count`` frames spread evenly over a clip, first and last included (repeats when it is shorter)."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]


def read_clip(path: str | Path, size: int | None = None) -> torch.Tensor:
    """A clip from a folder or video file as (3, F, H, W) in [-1, 1]; with ``size``, each frame is
    resized (shorter side) and centre-cropped to ``size`` x ``size``."""
    frames = read_frames(path)
    return clip_to_tensor([resize_crop(f, size) for f in frames] if size else frames)


def clip_paths(source: str | Path) -> list[Path]:
    """The clips of a folder (its sub-folders and video files, in name order) or the ``video``
    paths of a JSONL clip manifest (relative ones resolved against its folder)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS)
    elif source.is_file():
        records = read_manifest(source)
        missing = [r.get("id", i) for i, r in enumerate(records) if "video" not in r]
        if missing:
            raise ValueError(f"{source}: not a clip manifest, records without 'video': {missing[:5]}")
        paths = [Path(r["video"]) for r in records]
    else:
        raise FileNotFoundError(f"no clip folder or clip manifest at {source}")
    if not paths:
        raise ValueError(f"no clips (frame folders or {', '.join(VIDEO_EXTENSIONS)} files) in {source}")
    return paths


def load_clips(source: str | Path, frames: int, size: int | None = None, limit: int | None = None) -> torch.Tensor:
    """The first ``frames`` frames (1 + 4k) of every clip of a folder or manifest, optionally
    cropped to ``size``: (n, 3, frames, S, S) in [-1, 1]. A clip that is shorter or cannot be
    decoded is an error here (an evaluation set must be complete)."""
    check_frame_count(frames)
    clips = []
    for path in clip_paths(source)[:limit]:
        clip = read_clip(path, size)
        if clip.shape[1] < frames:
            raise ValueError(f"{path}: {clip.shape[1]} frames, fewer than the {frames} asked for")
        clips.append(clip[:, :frames])
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) > 1:
        raise ValueError(f"clips of different sizes in {source}: {sorted(shapes)}; pass size=")
    return torch.stack(clips)


class ClipDataset(ImageItemDataset):
    """Clip records as items of the image data sets (``data.datasets``), with ``image`` a clip
    (3, frames, S, S) in [-1, 1] (``collate_items`` stacks them to (B, 3, frames, S, S)); tasks
    "caption", "t2i" and "instruction" (one item per QA pair). Of a longer clip, understanding
    ("caption", "instruction") reads ``frames`` frames spread evenly over it, as ``hydra-umm answer
    --frames`` and the lmms-eval adapter do, and generation ("t2i") its first ``frames``, at the
    video's own rate. A clip that cannot be decoded, or has fewer frames, is skipped and counted in
    ``skips``."""

    def __init__(self, records: Sequence[dict], task: str, image_size: int, frames: int):
        super().__init__(image_size)
        check_task(task, CLIP_TASKS)
        check_frame_count(frames)
        for i, r in enumerate(records):
            if "video" not in r or "caption" not in r:
                raise ValueError(f"clip record {i} lacks 'video' or 'caption': keys {sorted(r)}")
        if not records:
            raise ValueError("no clip records")
        self.records, self.task, self.frames = list(records), task, frames
        if task == "instruction":  # one item per QA pair
            self.index = [(i, j) for i, r in enumerate(self.records) for j in range(len(r.get("qa", [])))]
            if not self.index:
                raise ValueError("task 'instruction' needs clip records with a 'qa' list; none has one")
        else:
            self.index = [(i, -1) for i in range(len(self.records))]

    @classmethod
    def from_manifest(cls, path: Union[str, Path], task: str, image_size: int, frames: int,
                      split: str | None = None) -> "ClipDataset":
        """A JSONL clip manifest (relative ``video`` paths resolved against its folder), optionally
        only the records of one ``split`` (:func:`split_records`)."""
        records = split_records(read_manifest(path), split)
        if not records:
            raise ValueError(f"{path}: no records" + (f" in split {split!r}" if split else ""))
        return cls(records, task, image_size, frames)

    def __len__(self) -> int:
        return len(self.index)

    def item(self, index: int) -> dict:
        i, j = self.index[index]
        record = self.records[i]
        video = record["video"]
        try:
            frames = read_frames(video) if isinstance(video, (str, Path)) else list(video)
        except FileNotFoundError as e:  # skipped and counted, as a missing image is
            raise UnreadableImage(str(video), str(e)) from None
        if len(frames) < self.frames:
            raise UnreadableImage(str(video) if isinstance(video, (str, Path)) else f"record {index}",
                                  f"{len(frames)} frames, fewer than the {self.frames} asked for")
        frames = frames[: self.frames] if self.task == "t2i" else sample_frames(frames, self.frames)
        clip = torch.stack([self.transform(f) for f in frames], dim=1)  # (3, F, S, S)
        return qa_item(clip, record["qa"][j]) if self.task == "instruction" else caption_item(clip, record["caption"],
                                                                                             self.task)
