"""Clip I/O (PNG folders exactly, mp4 within a tolerance), the clip data set (frame counts, corrupt
clips skipped and counted) and `hydra-umm shapes make --video` end to end."""

import json

import numpy as np
import pytest
import torch

from hydra_umm.cli import main
from hydra_umm.data.datasets import UnreadableImage, collate_items, load_image
from hydra_umm.data.manifest import read_manifest
from hydra_umm.data.shapes import Clip, check_clip, clip_records, render_clip, sample_clip
from hydra_umm.data.video import (ClipDataset, check_frame_count, clip_to_tensor, load_clips, read_clip, read_frames,
                                  tensor_to_frames, write_clip)

FRAMES, SIZE = 5, 64


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * np.log10(4 / (a - b).pow(2).mean().item())


@pytest.fixture(scope="module")
def frames():
    return render_clip(sample_clip(np.random.default_rng(0), FRAMES), SIZE)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Clip data sets written by the CLI, one per format."""
    out = {}
    for fmt in ("png", "mp4"):
        folder = tmp_path_factory.mktemp(f"clips_{fmt}")
        main(["shapes", "make", "--video", "--frames", str(FRAMES), "--n", "6", "--size", str(SIZE), "--seed", "2",
              "--format", fmt, "--out", str(folder)])
        out[fmt] = folder
    return out


def test_frame_counts_must_be_one_plus_a_multiple_of_four():
    for ok in (1, 5, 9, 17):
        check_frame_count(ok)
    for bad in (0, 2, 4, 6, 16):
        with pytest.raises(ValueError, match=r"1 \+ 4k frames .* got " + str(bad)):
            check_frame_count(bad)


def test_png_folders_round_trip_exactly(frames, tmp_path):
    clip = clip_to_tensor(frames)
    assert clip.shape == (3, FRAMES, SIZE, SIZE) and clip.min() >= -1 and clip.max() <= 1
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(tensor_to_frames(clip), frames))
    write_clip(frames, tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [f"{t:05d}.png" for t in range(FRAMES)]
    assert torch.equal(read_clip(tmp_path / "clip"), clip)
    assert read_clip(tmp_path / "clip", size=16).shape == (3, FRAMES, 16, 16)


def test_mp4_round_trips_within_a_tolerance(frames, tmp_path):
    path = write_clip(frames, tmp_path / "clip.mp4")
    clip, back = clip_to_tensor(frames), read_clip(path)
    assert back.shape == clip.shape
    psnr = psnr_db(clip, back)
    print(f"\nmp4 (H.264 yuv420p) round trip of a {SIZE}px shapes clip: PSNR {psnr:.1f} dB")
    assert psnr > 25
    with pytest.raises(ValueError, match="even"):
        write_clip([f.crop((0, 0, 63, 63)) for f in frames], tmp_path / "odd.mp4")


def test_unreadable_clips_raise_unreadable_image(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 50)
    with pytest.raises(UnreadableImage):
        read_frames(tmp_path / "bad.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnreadableImage, match="no frames"):
        read_frames(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "missing.mp4")


def test_shapes_make_video_writes_clips_and_manifests(made):
    for fmt, folder in made.items():
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["frames"] == FRAMES and summary["format"] == fmt and sum(summary["clips"].values()) == 6
        records = [r for split in summary["clips"] for r in read_manifest(folder / f"{split}.jsonl")]
        assert len(records) == 6
        for r in records:
            clip = Clip.from_dict(r["clip"])
            truth = clip_to_tensor(render_clip(clip, SIZE))
            video = read_clip(folder / r["video"])
            anchor = clip_to_tensor([load_image(r["image"])])  # the anchor frame, losslessly, for image loaders
            assert r["frames"] == FRAMES and video.shape == truth.shape and torch.equal(anchor, truth[:, :1])
            if fmt == "png":
                assert torch.equal(video, truth) and r["image"].endswith("00000.png")
            else:
                assert psnr_db(video, truth) > 25
            assert check_clip(tensor_to_frames(video), r["metadata"])["correct"]  # even through H.264


def test_clip_dataset_reads_manifests_and_memory(made):
    for folder in made.values():
        data = ClipDataset.from_manifest(folder / "train.jsonl", "t2i", image_size=16, frames=FRAMES)
        item = data[0]
        assert item["kind"] == "gen" and item["image"].shape == (3, FRAMES, 16, 16) and item["prompt"]
        batch = collate_items([data[i] for i in range(len(data))])
        assert batch["image"].shape == (len(data), 3, FRAMES, 16, 16) and data.skips.count == 0
    records = clip_records(SIZE, n=6, frames=9, seed=2)
    cut = ClipDataset(records, "caption", image_size=SIZE, frames=FRAMES)
    item = cut[0]
    assert item["kind"] == "und" and item["target"] == records[0]["caption"]
    # of a longer clip (9 frames) understanding reads FRAMES spread evenly, generation the first FRAMES
    assert torch.equal(item["image"], clip_to_tensor(records[0]["video"][::2]))
    first = ClipDataset(records, "t2i", image_size=SIZE, frames=FRAMES)[0]
    assert torch.equal(first["image"], clip_to_tensor(records[0]["video"][:FRAMES]))


def test_clip_dataset_refuses_bad_frame_counts_and_tasks():
    records = clip_records(SIZE, n=4, frames=FRAMES, seed=0)
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        ClipDataset(records, "t2i", SIZE, frames=6)
    with pytest.raises(ValueError, match="unknown task"):
        ClipDataset(records, "edit", SIZE, frames=FRAMES)
    with pytest.raises(ValueError, match="needs clip records with a 'qa' list"):
        ClipDataset([{k: v for k, v in r.items() if k != "qa"} for r in records], "instruction", SIZE, frames=FRAMES)
    questions = ClipDataset(records, "instruction", SIZE, frames=FRAMES)  # one item per QA pair
    assert len(questions) == sum(len(r["qa"]) for r in records)
    first = records[0]["qa"][0]
    assert questions[0]["kind"] == "und" and questions[0]["target"] == str(first["answer"])
    assert questions[0]["image"].shape == (3, FRAMES, SIZE, SIZE)
    with pytest.raises(ValueError, match="lacks 'video'"):
        ClipDataset([{"caption": "x", "image": "a.png"}], "t2i", SIZE, frames=FRAMES)


def test_corrupt_and_short_clips_are_skipped_and_counted(made, tmp_path):
    records = [dict(r) for r in read_manifest(made["mp4"] / "train.jsonl")]
    for r in records:
        r["video"] = str(made["mp4"] / r["video"])
    (tmp_path / "bad.mp4").write_bytes(b"garbage" * 100)
    write_clip(render_clip(sample_clip(np.random.default_rng(1), 2), SIZE), tmp_path / "short")
    broken = [{**records[0], "video": str(tmp_path / "bad.mp4")}, {**records[0], "video": str(tmp_path / "short")},
              {**records[0], "video": str(tmp_path / "missing.mp4")}, *records]
    data = ClipDataset(broken, "t2i", SIZE, frames=FRAMES)
    first = data[0]  # skips the corrupt, the 2-frame and the missing clip, lands on the next readable one
    assert data.skips.count == 3 and torch.equal(first["image"], data[3]["image"])


def test_load_clips_from_folders_and_manifests(made, frames, tmp_path):
    for folder in made.values():
        from_manifest = load_clips(folder / "train.jsonl", FRAMES, size=32)
        assert from_manifest.shape == (len(read_manifest(folder / "train.jsonl")), 3, FRAMES, 32, 32)
    from_folder = load_clips(made["png"] / "clips", 1)  # every clip folder, cut to its anchor
    assert from_folder.shape == (6, 3, 1, SIZE, SIZE)
    write_clip(frames[:3], tmp_path / "clips" / "short")
    with pytest.raises(ValueError, match="3 frames, fewer than the 5"):
        load_clips(tmp_path / "clips", FRAMES)
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        load_clips(made["png"] / "train.jsonl", 4)
    image_manifest = tmp_path / "images.jsonl"
    image_manifest.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="not a clip manifest"):
        load_clips(image_manifest, FRAMES)


def test_a_clip_data_set_of_the_same_settings_is_reused_and_no_other_overwrites_it(tmp_path):
    from hydra_umm.data.shapes import make_clip_dataset

    first = make_clip_dataset(tmp_path, n=6, frames=FRAMES, size=SIZE, seed=2)
    manifest = tmp_path / "train.jsonl"
    written = manifest.stat().st_mtime_ns
    assert make_clip_dataset(tmp_path, n=6, frames=FRAMES, size=SIZE, seed=2, reuse=True) == first
    assert manifest.stat().st_mtime_ns == written  # nothing rendered again
    (tmp_path / "request.json").unlink()  # a data set made before requests were recorded: its summary says
    assert make_clip_dataset(tmp_path, n=6, frames=FRAMES, size=SIZE, seed=2, reuse=True) == first
    for seed, reuse in [(3, True), (3, False)]:
        with pytest.raises(ValueError, match=rf"{tmp_path} already holds another shapes data set \(clips=6, "
                                             rf"frames={FRAMES}, size={SIZE}, seed=2, format=png; asked for .*seed=3"):
            make_clip_dataset(tmp_path, n=6, frames=FRAMES, size=SIZE, seed=seed, reuse=reuse)
    assert manifest.stat().st_mtime_ns == written and json.loads((tmp_path / "summary.json").read_text()) == first
