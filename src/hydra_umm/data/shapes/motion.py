"""The shapes world in motion: seeded clips of 1 + T frames, their captions, questions, metadata, a
tracker that reads the objects back from the frames, and the data-set writer.

A clip starts from a scene of the still world (``world.sample_scene``); each object then does one
thing (its *event*) over the clip:

- ``"moves"``: constant velocity (fractions of the side per frame), bouncing elastically at the
  borders (its box never leaves the image); its *direction* is the dominant axis of its net
  displacement from the first to the last frame, which the sampler keeps clear (the main axis at
  least ``CLEAR_RATIO`` times the other and at least ``MIN_TRAVEL`` of the side);
- ``"still"``: stays where it is;
- ``"appears"``: still, invisible before its event frame;
- ``"recolors"``: still, takes another colour from its event frame on.

Event frames lie in the middle half of the clip. At least one object moves. Objects keep the still
world's gaps in every frame (visible or not), so each frame is a valid scene for the image scorer.

Reading a clip back (``track``): the image scorer's ``detect`` on every frame, detections linked
frame to frame by a minimum-cost assignment on centre distance (a shape change costs extra, a jump
beyond ``MAX_STEP`` is no link); each track is then summarised as one event and direction.
``check_clip`` judges a (generated) clip against the metadata of its caption: every described
object must be matched by its own track, and no object may be left over.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from hydra_umm.data.manifest import write_manifest
from hydra_umm.data.shapes.captions import join
from hydra_umm.data.shapes.prompts import with_article
from hydra_umm.data.shapes.questions import multiple_choice, qa_item
from hydra_umm.data.shapes.render import render
from hydra_umm.data.shapes.scorer import Detection, detect
from hydra_umm.data.shapes.world import BORDER, COLORS, HELDOUT_PAIRS, Scene, ShapeObject, fits, sample_scene
from hydra_umm.data.shapes.writer import SUMMARY_FILE, claim_folder, split_sizes

EVENTS: tuple[str, ...] = ("moves", "still", "appears", "recolors")
EVENT_WEIGHTS = (0.5, 0.2, 0.15, 0.15)  # how often an object does each (one object always moves)
MAX_CLIP_OBJECTS = 3
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TRAVEL = (0.3, 0.6)  # distance a mover covers over the clip along its main axis, fraction of the side
DRIFT = 0.3  # largest speed across the main axis, as a fraction of the speed along it
CLEAR_RATIO = 2.0  # the net displacement's main axis is at least this many times the other
MIN_TRAVEL = 0.1  # ... and at least this fraction of the side
MOVE_THRESHOLD = 0.05  # tracker: a track moves when it gets this far (fraction of the side) from its start
MAX_STEP = 0.2  # tracker: largest centre jump between two detections of one track, fraction of the side
SHAPE_SWITCH_COST = 0.5  # tracker: extra cost of linking two detections of different shapes
ANIMATION_TRIES = 20  # animations tried on one scene before drawing another
EPS = 1e-9  # keeps bounced boxes strictly inside the border

MOVE_WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
MOVE_VERBS = ("moves", "slides", "travels")
STILL_PHRASES = ("stays still", "does not move", "stays in place")
APPEAR_PHRASES = ("appears", "shows up", "appears later")
CLIP_TEMPLATES = ("{L}", "a video in which {L}", "a clip where {L}", "in this video, {L}")


def bounce(p0: float, v: float, t: float, lo: float, hi: float) -> float:
    """Position at frame ``t`` of a point that starts at ``p0`` in [lo, hi] with velocity ``v`` per
    frame and is reflected at both ends (a triangle wave of period 2 (hi - lo))."""
    span = hi - lo
    u = (p0 - lo + v * t) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def dominant_direction(dx: float, dy: float) -> str:
    """``"left"``, ``"right"``, ``"up"`` or ``"down"``: the sign of the larger axis of (dx, dy)."""
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@dataclass(frozen=True)
class MovingObject:
    """An object of the still world (its frame-0 state) with a velocity and at most one event."""

    start: ShapeObject
    vx: float = 0.0  # fraction of the side per frame, x to the right
    vy: float = 0.0  # y downwards
    appear: int = 0  # first frame in which it is visible
    recolor: Optional[tuple[int, str]] = None  # (frame, colour from that frame on)

    @property
    def event(self) -> str:
        if self.vx or self.vy:
            return "moves"
        if self.appear > 0:
            return "appears"
        return "recolors" if self.recolor is not None else "still"

    @property
    def end_color(self) -> str:
        return self.recolor[1] if self.recolor is not None else self.start.color

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The (lo, hi) range of the centre along x and along y that keeps the box inside the border."""
        x0, y0, x1, y1 = self.start.box
        hx, hy = (x1 - x0) / 2, (y1 - y0) / 2
        return (BORDER + hx + EPS, 1 - BORDER - hx - EPS), (BORDER + hy + EPS, 1 - BORDER - hy - EPS)

    def at(self, t: int) -> ShapeObject:
        """The object at frame ``t`` (visible or not)."""
        (xlo, xhi), (ylo, yhi) = self.limits()
        color = self.recolor[1] if self.recolor is not None and t >= self.recolor[0] else self.start.color
        return replace(self.start, color=color, cx=bounce(self.start.cx, self.vx, t, xlo, xhi),
                       cy=bounce(self.start.cy, self.vy, t, ylo, yhi))

    def displacement(self, frames: int) -> tuple[float, float]:
        """Net (dx, dy) from the first to the last frame, fractions of the side."""
        a, b = self.start, self.at(frames - 1)
        return b.cx - a.cx, b.cy - a.cy

    def to_dict(self) -> dict:
        return {**asdict(self.start), "vx": self.vx, "vy": self.vy, "appear": self.appear,
                "recolor": list(self.recolor) if self.recolor is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "MovingObject":
        start = ShapeObject(**{k: d[k] for k in ("shape", "color", "size", "cx", "cy")})
        recolor = d.get("recolor")
        return cls(start, float(d.get("vx", 0.0)), float(d.get("vy", 0.0)), int(d.get("appear", 0)),
                   (int(recolor[0]), str(recolor[1])) if recolor else None)


@dataclass(frozen=True)
class Clip:
    objects: tuple[MovingObject, ...]
    frames: int  # 1 + T
    background: float = 0.9
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"a clip in motion needs at least 2 frames, got {self.frames}")

    def scene(self, t: int) -> Scene:
        """The still scene of frame ``t``: the objects visible then, where they are then."""
        if not 0 <= t < self.frames:
            raise ValueError(f"frame {t} out of range for a clip of {self.frames} frames")
        return Scene(tuple(o.at(t) for o in self.objects if t >= o.appear), self.background, self.texture_seed)

    def direction(self, obj: MovingObject) -> Optional[str]:
        """The clear direction of a mover's net displacement, ``None`` when unclear or not moving."""
        if obj.event != "moves":
            return None
        dx, dy = obj.displacement(self.frames)
        major, minor = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
        return dominant_direction(dx, dy) if major >= MIN_TRAVEL and major >= CLEAR_RATIO * minor else None

    def is_valid(self) -> bool:
        """Every mover has a clear direction and no two objects come closer than the world's gap."""
        if any(o.event == "moves" and self.direction(o) is None for o in self.objects):
            return False
        for t in range(self.frames):
            placed = [o.at(t) for o in self.objects]
            if any(not fits(a.box, placed[i + 1:]) for i, a in enumerate(placed)):
                return False
        return True

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "frames": self.frames,
                "background": self.background, "texture_seed": self.texture_seed}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Clip":
        return cls(tuple(MovingObject.from_dict(o) for o in d["objects"]), int(d["frames"]),
                   float(d.get("background", 0.9)), int(d.get("texture_seed", 0)))


def render_clip(clip: Clip, size: int = 64) -> list[Image.Image]:
    """The clip's frames as RGB PIL images (deterministic); the background does not move."""
    return [render(clip.scene(t), size) for t in range(clip.frames)]


# ----------------------------------------------------------------------------------- sampling


def event_frame(rng: np.random.Generator, frames: int) -> int:
    """A frame in the middle half of the clip (never the first)."""
    t = frames - 1
    return int(rng.integers(max(1, t // 4), max(1, (3 * t) // 4) + 1))


def animate(obj: ShapeObject, event: str, rng: np.random.Generator, frames: int,
            exclude_pairs: set[tuple[str, str]]) -> MovingObject:
    """``obj`` doing ``event`` over a clip of ``frames`` frames."""
    if event == "moves":
        ux, uy = DIRECTIONS[str(rng.choice(list(DIRECTIONS)))]
        speed = rng.uniform(*TRAVEL) / (frames - 1)
        drift = rng.uniform(-DRIFT, DRIFT) * speed
        return MovingObject(obj, vx=ux * speed + uy * drift, vy=uy * speed + ux * drift)
    if event == "appears":
        return MovingObject(obj, appear=event_frame(rng, frames))
    if event == "recolors":
        colors = [c for c in COLORS if c != obj.color and (c, obj.shape) not in exclude_pairs]
        return MovingObject(obj, recolor=(event_frame(rng, frames), colors[int(rng.integers(len(colors)))]))
    if event == "still":
        return MovingObject(obj)
    raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")


def sample_clip(rng: np.random.Generator, frames: int = 17, n_objects: Optional[int] = None,
                exclude_pairs: Iterable[tuple[str, str]] = (), require_pair: Optional[tuple[str, str]] = None) -> Clip:
    """A random valid clip of 1..MAX_CLIP_OBJECTS objects (see ``Clip.is_valid``); ``exclude_pairs``
    and ``require_pair`` as in ``sample_scene`` (a new colour never forms an excluded pair)."""
    if frames < 2:
        raise ValueError(f"a clip in motion needs at least 2 frames, got {frames}")
    if n_objects is not None and not 1 <= n_objects <= MAX_CLIP_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_CLIP_OBJECTS}, got {n_objects}")
    exclude = set(exclude_pairs)
    while True:
        n = int(rng.integers(1, MAX_CLIP_OBJECTS + 1)) if n_objects is None else n_objects
        scene = sample_scene(rng, n, exclude, require_pair)
        for _ in range(ANIMATION_TRIES):  # several animations per scene, so crowded scenes survive too
            events = [str(e) for e in rng.choice(EVENTS, size=n, p=EVENT_WEIGHTS)]
            if "moves" not in events:
                events[int(rng.integers(n))] = "moves"
            objects = tuple(animate(o, e, rng, frames, exclude) for o, e in zip(scene.objects, events))
            clip = Clip(objects, frames, scene.background, scene.texture_seed)
            if clip.is_valid():
                return clip


# ------------------------------------------------------------------ captions, questions, metadata


def name(obj: MovingObject) -> str:
    """``"red circle"``: the object by its first colour."""
    return obj.start.name


def clause(clip: Clip, obj: MovingObject, rng: np.random.Generator) -> str:
    """What one object does: "a red circle moves to the left", "a blue star turns green"."""
    subject = with_article(name(obj))
    event = obj.event
    if event == "moves":
        return f"{subject} {MOVE_VERBS[int(rng.integers(len(MOVE_VERBS)))]} {MOVE_WORDS[clip.direction(obj)]}"
    if event == "appears":
        return f"{subject} {APPEAR_PHRASES[int(rng.integers(len(APPEAR_PHRASES)))]}"
    if event == "recolors":
        return f"{subject} turns {obj.end_color}"
    return f"{subject} {STILL_PHRASES[int(rng.integers(len(STILL_PHRASES)))]}"


def ordered(clip: Clip) -> list[MovingObject]:
    """Objects in caption order: by event (movers first), then left to right."""
    return sorted(clip.objects, key=lambda o: (EVENTS.index(o.event), o.start.cx))


def clip_caption(clip: Clip, rng: np.random.Generator) -> str:
    """A random natural caption of everything the clip shows."""
    template = CLIP_TEMPLATES[int(rng.integers(len(CLIP_TEMPLATES)))]
    return template.format(L=join([clause(clip, o, rng) for o in ordered(clip)]))


def clip_metadata(clip: Clip) -> dict:
    """What a caption of the clip asks of a generated clip, position-free: one clause per object
    ``{"shape", "color", "event"}`` plus ``"direction"`` for movers and ``"to"`` (the new colour)
    for recolouring objects."""
    include = []
    for o in ordered(clip):
        req = {"shape": o.start.shape, "color": o.start.color, "event": o.event}
        if o.event == "moves":
            req["direction"] = clip.direction(o)
        if o.event == "recolors":
            req["to"] = o.end_color
        include.append(req)
    return {"frames": clip.frames, "include": include}


def unambiguous(clip: Clip) -> list[MovingObject]:
    """Objects that their name ("red circle") picks out: no other object of that shape ever has
    that colour (nor the object's own later colour)."""
    def colors(o: MovingObject) -> set[str]:
        return {o.start.color, o.end_color}

    return [o for o in clip.objects
            if not any(p is not o and p.start.shape == o.start.shape and colors(p) & colors(o) for p in clip.objects)]


def clip_questions(clip: Clip, rng: np.random.Generator) -> list[dict]:
    """QA pairs about the clip, in random order; types ``"direction"`` (of a named mover),
    ``"moved"`` (which object moves, when one does; its multiple-choice version lists the other
    objects), ``"moved_yes_no"``, ``"count"`` (objects at the start and at the end, movers) and
    ``"color_end"`` (colour of a shape at the end)."""
    movers = [o for o in clip.objects if o.event == "moves"]
    named = unambiguous(clip)
    out = []
    named_movers = [o for o in named if o.event == "moves"]
    if named_movers:
        o = named_movers[int(rng.integers(len(named_movers)))]
        qa = qa_item(f"In which direction does the {name(o)} move?", clip.direction(o), "direction")
        out += [qa, multiple_choice(qa, list(DIRECTIONS), rng)]
    if len(movers) == 1 and movers[0] in named:
        qa = qa_item("Which object moves?", name(movers[0]), "moved")
        out.append(qa)
        if len(named) > 1:
            out.append(multiple_choice(qa, [name(o) for o in named], rng))
    if named:
        o = named[int(rng.integers(len(named)))]
        out.append(qa_item(f"Does the {name(o)} move?", "yes" if o.event == "moves" else "no", "moved_yes_no"))
    start, end = clip.scene(0).objects, clip.scene(clip.frames - 1).objects
    out.append(qa_item("How many objects are there at the end?", str(len(end)), "count"))
    out.append(qa_item("How many objects move?", str(len(movers)), "count"))
    if len(start) != len(end):
        out.append(qa_item("How many objects are there at the start?", str(len(start)), "count"))
    shapes = Counter(o.start.shape for o in clip.objects)
    unique = [o for o in clip.objects if shapes[o.start.shape] == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        qa = qa_item(f"What color is the {o.start.shape} at the end?", o.end_color, "color_end")
        out += [qa, multiple_choice(qa, list(COLORS), rng)]
    return [out[i] for i in rng.permutation(len(out))]


# ------------------------------------------------------------------------------------ tracker


@dataclass
class Track:
    """One object followed through a clip: its detections as (frame, Detection), in frame order."""

    detections: list[tuple[int, Detection]] = field(default_factory=list)

    @staticmethod
    def centre(d: Detection) -> np.ndarray:
        return np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2])

    def summary(self, side: int) -> dict:
        """Shape (majority), first and last colour, first and last frame, net displacement (fraction of
        the side), event (``"appears"`` if first seen after frame 0, else ``"recolors"`` if its colour
        changed, else ``"moves"`` if it got ``MOVE_THRESHOLD`` away from its start, else ``"still"``)
        and direction (of the net displacement, for movers)."""
        first, last = self.detections[0], self.detections[-1]
        origin = self.centre(first[1])
        reach = max(np.linalg.norm(self.centre(d) - origin) for _, d in self.detections) / side
        dx, dy = (self.centre(last[1]) - origin) / side
        if first[0] > 0:
            event = "appears"
        elif first[1].color != last[1].color:
            event = "recolors"
        else:
            event = "moves" if reach >= MOVE_THRESHOLD else "still"
        return {"shape": Counter(d.shape for _, d in self.detections).most_common(1)[0][0],
                "color": first[1].color, "end_color": last[1].color, "first": first[0], "last": last[0],
                "dx": float(dx), "dy": float(dy), "event": event,
                "direction": dominant_direction(dx, dy) if event == "moves" else None}


def track(frames: Sequence[Image.Image | np.ndarray]) -> list[Track]:
    """Objects followed through RGB frames (PIL, or float (H, W, 3) in [0, 1]): each frame's
    detections are assigned to the tracks so far by minimum total cost (centre distance as a
    fraction of the side, plus ``SHAPE_SWITCH_COST`` for a shape change; links costing more than
    ``MAX_STEP`` are refused); a detection left over starts a new track. A track missed in some
    frames can be picked up again later."""
    tracks: list[Track] = []
    for t, frame in enumerate(frames):
        side = min(frame.size) if isinstance(frame, Image.Image) else min(np.asarray(frame).shape[:2])
        found = detect(frame)
        if tracks and found:
            cost = np.array([[np.linalg.norm(Track.centre(tr.detections[-1][1]) - Track.centre(d)) / side
                              + SHAPE_SWITCH_COST * (tr.detections[-1][1].shape != d.shape) for d in found]
                             for tr in tracks])
            rows, cols = linear_sum_assignment(cost)
            linked = {c: r for r, c in zip(rows, cols) if cost[r, c] <= MAX_STEP}
        else:
            linked = {}
        for j, d in enumerate(found):
            if j in linked:
                tracks[linked[j]].detections.append((t, d))
            else:
                tracks.append(Track([(t, d)]))
    return tracks


def satisfies(summary: Mapping, req: Mapping) -> bool:
    """Whether a track's summary does what one metadata clause asks."""
    return (summary["shape"] == req["shape"] and summary["color"] == req["color"] and summary["event"] == req["event"]
            and (req["event"] != "moves" or summary["direction"] == req["direction"])
            and (req["event"] != "recolors" or summary["end_color"] == req["to"]))


def check_clip(frames: Sequence[Image.Image | np.ndarray], metadata: Mapping) -> dict:
    """Judge a clip against ``clip_metadata``: correct iff every clause is met by a track of its own
    (a maximum matching) and no track is left over. Returns correct, reason and the track summaries."""
    if len(frames) != metadata["frames"]:
        raise ValueError(f"the metadata describes {metadata['frames']} frames, the clip has {len(frames)}")
    side = min(frames[0].size) if isinstance(frames[0], Image.Image) else min(np.asarray(frames[0]).shape[:2])
    summaries = [tr.summary(side) for tr in track(frames)]
    include = metadata["include"]
    ok = np.array([[satisfies(s, req) for s in summaries] for req in include], dtype=float).reshape(len(include), -1)
    rows, cols = linear_sum_assignment(-ok)
    met = {r for r, c in zip(rows, cols) if ok[r, c]}
    used = {c for r, c in zip(rows, cols) if ok[r, c]}
    reasons = [f"expected {json.dumps(req, sort_keys=True)}, no track does that" for i, req in enumerate(include)
               if i not in met]
    reasons += [f"unexpected object: {json.dumps(s, sort_keys=True)}" for j, s in enumerate(summaries) if j not in used]
    return {"correct": not reasons, "reason": "\n".join(reasons), "tracks": summaries}


# ------------------------------------------------------------------------------------- writer


def clip_splits(n: int, frames: int, seed: int) -> dict[str, list[tuple[int, Clip]]]:
    """Distinct clips per split with their global index (the numbering of the files), as
    ``writer.indexed_splits`` does for scenes: train/val/test never hold a held-out pair, each
    heldout clip holds one."""
    sizes = split_sizes(n)
    rng = np.random.default_rng([seed, 2])
    seen: set = set()
    out, index = {}, 0
    for split, count in sizes.items():
        clips: list[tuple[int, Clip]] = []
        while len(clips) < count:
            if split == "heldout":
                clip = sample_clip(rng, frames, require_pair=HELDOUT_PAIRS[len(clips) % len(HELDOUT_PAIRS)])
            else:
                clip = sample_clip(rng, frames, exclude_pairs=HELDOUT_PAIRS)
            key = (clip.scene(0).key(), tuple((o.vx, o.vy, o.appear, o.recolor) for o in clip.objects))
            if key not in seen:
                seen.add(key)
                clips.append((index, clip))
                index += 1
        out[split] = clips
    return out


def clip_record(clip: Clip, split: str, index: int, seed: int, size: int) -> dict:
    """The manifest record of clip number ``index`` without its files: id, caption, questions (seeded
    by ``(seed, index)`` alone), clip, caption metadata and split."""
    rng = np.random.default_rng([seed, index])
    return {"id": f"{split}-{index:06d}", "frames": clip.frames, "caption": clip_caption(clip, rng),
            "qa": clip_questions(clip, rng), "clip": {**clip.to_dict(), "image_size": size},
            "metadata": clip_metadata(clip), "split": split}


def clip_records(image_size: int, n: int = 100, frames: int = 17, seed: int = 0, split: str = "train") -> list[dict]:
    """The clips of ``split`` in memory, as ``make_clip_dataset`` with the same n, frames and seed
    writes them: ``video`` a list of PIL frames, ``image`` its first frame (the anchor)."""
    splits = clip_splits(n, frames, seed)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; splits: {list(splits)}")
    out = []
    for index, clip in splits[split]:
        video = render_clip(clip, image_size)
        out.append({**clip_record(clip, split, index, seed, image_size), "image": video[0], "video": video})
    return out


VIDEO_FORMATS = ("png", "mp4")


def make_clip_dataset(out: str | Path, n: int = 100, frames: int = 17, size: int = 64, seed: int = 0,
                      video_format: str = "png", reuse: bool = False) -> dict:
    """Render ``n`` clips of ``frames`` frames at ``size`` px into ``out`` (deterministic given
    ``seed``), with one JSONL manifest per split in the image manifests' format plus ``video`` (the
    clip: ``clips/<id>/`` of PNG frames, or ``clips/<id>.mp4``) and ``frames``; ``image`` is the
    anchor frame as a PNG, so image loaders read a clip manifest as images. Returns a summary (also
    written to ``summary.json``). ``out`` must be new, empty or hold a data set of the same settings
    (:func:`~hydra_umm.data.shapes.writer.claim_folder`; ValueError else); with ``reuse`` a finished
    one is returned as it is."""
    from hydra_umm.data.video import check_frame_count, write_clip  # video I/O needs torch; the world does not

    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"unknown video format {video_format!r}; expected one of {VIDEO_FORMATS}")
    check_frame_count(frames)
    split_sizes(n)
    render(Scene(()), size)  # reject a bad size before any work
    out = Path(out)
    request = {"clips": split_sizes(n), "frames": frames, "size": size, "seed": seed, "format": video_format}
    finished = claim_folder(out, request, reuse)
    if finished is not None:
        return finished
    manifests = {}
    for split, clips in clip_splits(n, frames, seed).items():
        records = []
        for index, clip in clips:
            record = clip_record(clip, split, index, seed, size)
            video = render_clip(clip, size)
            if video_format == "png":
                folder = write_clip(video, out / "clips" / record["id"])
                paths = {"video": folder, "image": folder / "00000.png"}
            else:
                paths = {"video": write_clip(video, out / "clips" / f"{record['id']}.mp4"),
                         "image": out / "clips" / f"{record['id']}.png"}
                video[0].save(paths["image"])
            records.append({"id": record["id"], **{k: str(p.relative_to(out)) for k, p in paths.items()}, **record})
        manifests[split] = str(write_manifest(records, out / f"{split}.jsonl"))
    summary = {"out": str(out), **request, "manifests": manifests,
               "heldout_pairs": [f"{c} {s}" for c, s in HELDOUT_PAIRS]}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
