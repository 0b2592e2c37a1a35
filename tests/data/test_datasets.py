import json
import logging

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

from hydra_umm.data.datasets import (
    DESCRIBE,
    ConversationDataset,
    EditDataset,
    RecordDataset,
    ShardDataset,
    UnreadableImage,
    collate_items,
    load_image,
    shapes_records,
)
from hydra_umm.data.manifest import read_manifest, write_manifest
from hydra_umm.data.mixture import MixtureDataset, TaskMixture, shard_stream, skipped_count
from hydra_umm.data.shapes import make_dataset
from hydra_umm.data.manifest import ManifestError
from hydra_umm.data.transforms import ImageTransform, to_pil, to_tensor

S = 8  # model image size in these tests

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(color, size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """good_0..2.png with captions, a truncated PNG and a text file named .png."""
    root = tmp_path_factory.mktemp("images")
    for i, color in enumerate([RED, BLUE, (0, 255, 0)]):
        solid(color).save(root / f"good_{i}.png")
        (root / f"good_{i}.txt").write_text(f"caption {i}\n")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    noisy.save(root / "big.png")
    data = (root / "big.png").read_bytes()
    (root / "bad_truncated.png").write_bytes(data[: len(data) // 2])  # valid header, half the pixels
    (root / "big.png").unlink()
    (root / "bad_text.png").write_text("this is not an image")
    return root


# ---------------------------------------------------------------------------------- transforms


def test_transform_resizes_shorter_side_and_centre_crops():
    image = Image.new("RGB", (2 * S, S))
    image.paste(RED, (0, 0, S, S))  # left half red, right half blue
    image.paste(BLUE, (S, 0, 2 * S, S))
    x = ImageTransform(S)(image)
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[:, :, 0], torch.tensor([1.0, -1.0, -1.0])[:, None].expand(3, S))  # red edge
    torch.testing.assert_close(x[:, :, -1], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, S))  # blue edge
    tall = Image.new("RGB", (S, 3 * S), RED)  # red, green, blue from top to bottom: the middle stays
    tall.paste((0, 255, 0), (0, S, S, 2 * S))
    tall.paste(BLUE, (0, 2 * S, S, 3 * S))
    torch.testing.assert_close(ImageTransform(S)(tall), torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, S, S))


def test_to_pil_inverts_the_transform_at_model_size():
    pixels = np.random.default_rng(1).integers(0, 256, (S, S, 3), dtype=np.uint8)
    x = ImageTransform(S)(Image.fromarray(pixels))
    (back,) = to_pil(x)
    np.testing.assert_array_equal(np.asarray(back), pixels)
    with pytest.raises(ValueError, match="shape"):
        to_pil(torch.zeros(2, 1, S, S))


@pytest.mark.parametrize("mode, top", [("I;16", 65535), ("I;16B", 65535), ("I", 65535), ("F", 1.0)])
def test_high_bit_depth_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path, mode, top):
    ramp = np.linspace(0, 1, 256)[None].repeat(4, axis=0)  # a left-to-right gradient, black to white
    expected = (ramp * 255).round().astype(np.uint8)
    if mode == "F":
        image = Image.fromarray(ramp.astype(np.float32))
    elif mode == "I;16B":  # big-endian 16 bits (PIL's convert to it clips at 255)
        image = Image.frombytes(mode, (256, 4), (ramp * top).round().astype(">u2").tobytes())
    else:
        image = Image.fromarray((ramp * top).round().astype(np.uint16)).convert(mode)
    assert image.mode == mode
    for rgb in [load_image(image), to_pil(to_tensor(image))[0], to_pil(ImageTransform(4)(image.resize((4, 4))))[0]]:
        pixels = np.asarray(rgb)
        assert pixels.shape[-1] == 3 and (pixels[..., 0] == pixels[..., 2]).all()
        assert pixels.min() < 64 and pixels.max() > 192  # dark to light, not all white
    np.testing.assert_array_equal(np.asarray(load_image(image))[..., 0], expected)


def test_a_16_bit_png_on_disk_loads_as_its_gradient(tmp_path):
    ramp = np.arange(0, 65536, 257, dtype=np.uint16)[None].repeat(256, axis=0)  # 0, 257, ..., 65535: 8-bit 0..255
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "deep.png"))[0, :, 1], np.arange(256))
    (item,) = RecordDataset.from_folder(tmp_path, "t2i", S)
    row = item["image"][0, S // 2]
    assert row[0] < -0.8 and row[-1] > 0.8 and (row.diff() > 0).all()  # dark to light, as drawn


# ---------------------------------------------------------------------------------- unreadable


def test_load_image_names_the_problem(image_dir):
    for name, reason in [("bad_truncated.png", "truncated"), ("bad_text.png", "cannot identify")]:
        with pytest.raises(UnreadableImage, match=f"{name}.*{reason}"):
            load_image(image_dir / name)
    assert load_image(image_dir / "good_0.png").size == (12, 10)


def test_folder_dataset_skips_and_counts_corrupt_images(image_dir, caplog):
    ds = RecordDataset.from_folder(image_dir, "t2i", S)
    assert len(ds) == 5  # sorted: bad_text, bad_truncated, good_0, good_1, good_2
    with caplog.at_level(logging.WARNING, logger="hydra_umm.data.datasets"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.skips.count == 3  # index 0 skips 2 files, index 1 skips 1
    assert sum("skipped unreadable image" in r.message and "bad_text.png" in r.message for r in caplog.records) == 1
    assert [it["prompt"] for it in items] == ["caption 0", "caption 0", "caption 0", "caption 1", "caption 2"]
    assert all(it["kind"] == "gen" and it["target"] == "" and it["image"].shape == (3, S, S) for it in items)


def test_skip_count_is_shared_by_dataloader_workers(image_dir):
    ds = RecordDataset.from_folder(image_dir, "caption", S)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_items)
    batches = list(loader)
    assert len(batches) == 5
    assert ds.skips.count == 3  # counted inside the workers, visible here


def test_a_mixture_counts_the_skips_of_concatenated_sources(image_dir):
    parts = [RecordDataset.from_folder(image_dir, "t2i", S) for _ in range(2)]
    mixture = MixtureDataset({"t2i": ConcatDataset(parts)}, TaskMixture({"t2i": 1.0}, seed=0))
    for i in range(len(parts[0]) * 2):
        mixture[i]
    assert mixture.skipped == parts[0].skips.count + parts[1].skips.count == 6  # 3 per folder pass
    assert skipped_count(ConcatDataset(parts)) == skipped_count(mixture) == 6  # a source alone, or a mixture


def test_all_unreadable_is_a_clear_error(image_dir):
    ds = RecordDataset([{"image": str(image_dir / "bad_text.png"), "caption": "x"}], "t2i", S)
    with pytest.raises(ValueError, match="none of its 1 items has a readable image"):
        ds[0]


# ------------------------------------------------------------------------------------ manifests


def test_manifest_tasks_make_the_right_items(image_dir, tmp_path):
    qa = [{"question": "What colour?", "answer": "red", "type": "color"},
          {"question": "How many?", "answer": "1", "type": "count", "choices": ["1", "2"]}]
    records = [
        {"id": "a", "image": str(image_dir / "good_0.png"), "caption": "a red card", "qa": qa, "split": "train"},
        {"id": "b", "image": str(image_dir / "good_1.png"), "caption": "a blue card", "split": "val"},
    ]
    path = write_manifest(records, tmp_path / "m.jsonl")
    gen = RecordDataset.from_manifest(path, "t2i", S)
    assert [(it["kind"], it["prompt"], it["target"]) for it in gen] == [
        ("gen", "a red card", ""), ("gen", "a blue card", "")]
    cap = RecordDataset.from_manifest(path, "caption", S, split="val")
    assert len(cap) == 1 and (cap[0]["kind"], cap[0]["prompt"], cap[0]["target"]) == ("und", DESCRIBE, "a blue card")
    assert torch.allclose(cap[0]["image"], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, S, S))
    inst = RecordDataset.from_manifest(path, "instruction", S)
    assert [(it["prompt"], it["target"]) for it in inst] == [
        ("What colour?", "red"), ("How many?\nChoices: 1, 2", "1")]
    assert RecordDataset(records, "text", S)[0] == {"kind": "text", "image": None, "prompt": "", "target": "a red card"}
    edits = EditDataset([{"source": Image.new("RGB", (S, S), RED), "target": Image.new("RGB", (S, S), BLUE),
                          "instruction": "make it blue"}], S)
    edit = edits[0]
    assert (edit["kind"], edit["prompt"], edit["target"]) == ("edit", "make it blue", "")
    torch.testing.assert_close(edit["source"], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, S, S))
    torch.testing.assert_close(edit["image"], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, S, S))
    with pytest.raises(ValueError, match="no records in split 'test'"):
        RecordDataset.from_manifest(path, "t2i", S, split="test")
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        RecordDataset(records, "vqa", S)


def test_a_caption_file_that_is_not_utf8_is_named(tmp_path):
    solid(RED).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe a red card")
    with pytest.raises(ValueError, match=r"a\.txt: the caption is not UTF-8"):
        RecordDataset.from_folder(tmp_path, "t2i", S)


def test_a_manifest_without_records_of_the_split_says_so(tmp_path):
    solid(RED).save(tmp_path / "a.png")
    write_manifest([{"image": "a.png", "caption": "x", "split": "val"}], tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"m\.jsonl: no records in split 'train'"):
        RecordDataset.from_manifest(tmp_path / "m.jsonl", "t2i", S, split="train")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match=r"empty\.jsonl: the manifest holds no records"):
        RecordDataset.from_manifest(tmp_path / "empty.jsonl", "t2i", S)


# ----------------------------------------------------------------------------- LLaVA conversations


def test_llava_conversations(image_dir, tmp_path):
    data = [
        {"id": "1", "image": "good_1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A blue card."},
            {"from": "human", "value": "Is it red?"}, {"from": "gpt", "value": "No."}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "3", "image": "bad_text.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "?"}]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(data))
    ds = ConversationDataset(path, image_root=image_dir, image_size=S)
    assert len(ds) == 4
    first, follow_up, text = ds[0], ds[1], ds[2]
    assert (first["kind"], first["prompt"], first["target"]) == ("und", "What is shown?", "A blue card.")
    assert follow_up["prompt"] == "What is shown?\nA blue card.\nIs it red?" and follow_up["target"] == "No."
    assert (text["kind"], text["image"], text["prompt"], text["target"]) == ("text", None, "Say hi.", "Hi.")
    assert ds[3]["target"] == "A blue card." and ds.skips.count == 1  # unreadable -> next index (cyclic)
    batch = collate_items([first, text])
    assert batch["has_image"].tolist() == [True, False] and batch["image"].shape == (2, 3, S, S)
    assert torch.equal(batch["image"][1], torch.zeros(3, S, S)) and batch["kind"] == ["und", "text"]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "x"}, "needs a 'conversations' list"),
        ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
         "turn 0 must be"),
        ({"id": "x", "conversations": [{"from": "human", "value": "a"}]}, "alternating human/gpt"),
        ({"id": "x", "image": ["a.png", "b.png"], "conversations": []}, "multi-image"),
    ],
)
def test_llava_format_errors_name_the_record(tmp_path, record, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=message) as info:
        ConversationDataset(path, tmp_path, S)
    assert "id 'x'" in str(info.value)


@pytest.mark.parametrize("data, message", [
    (b'[{"id": "x", "conversations": [', r"bad\.json: not valid JSON \(Expecting value at line 1"),
    (b'[{"id": "\xff"}]', r"bad\.json: not UTF-8 text"),
    (b'[{"id": "x", "conversations": [{"from": "human", "value": "hi \\ud800"}, {"from": "gpt", "value": "a"}]}]',
     r"bad\.json: conversation 0 \(id 'x'\): holds a lone surrogate '\\ud800'"),
])
def test_an_unreadable_llava_file_is_named(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        ConversationDataset(path, tmp_path, S)


# -------------------------------------------------------------------------------------- shards


def test_webdataset_shards_skip_corrupt_images_and_captions(image_dir, tmp_path):
    png = (image_dir / "good_1.png").read_bytes()
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        sink.write({"__key__": "s0", "png": png, "txt": "a blue card"})
        sink.write({"__key__": "s1", "png": b"broken", "txt": "broken"})
        sink.write({"__key__": "s1b", "png": png, "txt": b"\xff\xfe not utf-8"})
        sink.write({"__key__": "s1c", "png": png, "json": b"{broken"})
        sink.write({"__key__": "s1d", "png": png})
    with wds.TarWriter(str(tmp_path / "shard-000001.tar")) as sink:
        sink.write({"__key__": "s2", "png": png, "json": json.dumps({"caption": "from json"}).encode()})
    urls = [str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")]
    ds = ShardDataset(urls, "caption", S)
    items = list(ds)
    assert [it["target"] for it in items] == ["a blue card", "from json"] and ds.skips.count == 4
    assert all(it["prompt"] == DESCRIBE and it["image"].shape == (3, S, S) for it in items)
    with pytest.raises(ValueError, match="unknown task 'instruction'"):
        ShardDataset(urls, "instruction", S)
    stream = shard_stream(ds, batch_size=1)
    assert next(stream)["target"] == ["a blue card"]
    stream.load_state_dict(stream.state_dict())  # resume at position 1: re-reads and drops batch 0
    assert next(stream)["target"] == ["from json"]


# -------------------------------------------------------------------------------- shapes world


def test_shapes_in_memory_match_the_written_data_set(tmp_path):
    n, size = 12, 32
    make_dataset(tmp_path, n=n, size=size, seed=3, prompts_per_tag=1)
    for split in ["train", "heldout"]:
        written = RecordDataset.from_manifest(tmp_path / f"{split}.jsonl", "instruction", size)
        memory = RecordDataset(shapes_records(size, n=n, seed=3, split=split), "instruction", size)
        on_disk = read_manifest(tmp_path / f"{split}.jsonl")
        assert [(r["id"], r["scene"]) for r in memory.records] == [(r["id"], r["scene"]) for r in on_disk]
        assert len(memory) == len(written) > 0
        for a, b in zip(memory, written):
            assert (a["prompt"], a["target"]) == (b["prompt"], b["target"])
            torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    gen = RecordDataset(shapes_records(size, n=n, seed=3), "t2i", size)
    assert [it["prompt"] for it in gen] == [r["caption"] for r in read_manifest(tmp_path / "train.jsonl")]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shapes_records(size, n=n, split="dev")
