"""The JSONL manifest: round trip, path resolution and clear errors naming the line."""

import json

import pytest

from hydra_umm.data.manifest import ManifestError, read_manifest, split_records, write_manifest


def test_round_trip_resolves_relative_images(tmp_path):
    records = [
        {"id": "a", "image": "images/a.png", "caption": "a red circle",
         "qa": [{"question": "What color is the circle?", "answer": "red", "type": "color"}],
         "scene": {"objects": []}, "split": "train"},
        {"image": str(tmp_path / "elsewhere" / "b.png"), "caption": "two blue stars"},
    ]
    path = write_manifest(records, tmp_path / "sub" / "m.jsonl")
    back = read_manifest(path)
    assert back[0]["image"] == str((tmp_path / "sub" / "images" / "a.png").resolve())
    assert back[1]["image"] == str(tmp_path / "elsewhere" / "b.png")  # absolute paths are kept
    for original, read in zip(records, back):
        assert {k: v for k, v in read.items() if k != "image"} == {k: v for k, v in original.items() if k != "image"}
    # the file itself keeps the relative path (the data set stays relocatable)
    assert json.loads(path.read_text().splitlines()[0])["image"] == "images/a.png"
    clip = write_manifest([{"image": "clips/c/0000.png", "video": "clips/c", "caption": "it moves"}],
                          tmp_path / "sub" / "clips.jsonl")
    (back,) = read_manifest(clip)  # a clip manifest's videos resolve the same way, wherever one runs from
    assert back["video"] == str((tmp_path / "sub" / "clips" / "c").resolve())


def test_missing_key_names_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n\n" + json.dumps({"image": "b.png"}) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: missing required key\(s\) \['caption'\]"):
        read_manifest(path)


@pytest.mark.parametrize("line,message", [
    ("{not json", r":1: not valid JSON"),
    ("[1, 2]", r":1: a record must be a JSON object"),
    ('{"image": "a.png", "caption": "x", "split": "dev"}', r":1: 'split' must be one of"),
    ('{"image": "a.png", "caption": "x", "qa": [{"question": "q"}]}', r":1: qa\[0\] must be an object"),
    ('{"image": "", "caption": "x"}', r":1: 'image' must be a non-empty path"),
])
def test_malformed_lines_are_refused(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_write_refuses_bad_records_and_missing_file_is_clear(tmp_path):
    with pytest.raises(ManifestError, match="missing required key"):
        write_manifest([{"caption": "no image"}], tmp_path / "m.jsonl")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "absent.jsonl")


def test_split_records_keeps_a_split_and_counts_records_without_one_as_train():
    named = [{"id": "a", "split": "train"}, {"id": "b", "split": "val"}, {"id": "c"}]
    assert [r["id"] for r in split_records(named, "val")] == ["b"]
    assert [r["id"] for r in split_records(named, "train")] == ["a", "c"]  # not dropped unseen
    assert split_records(named, None) == named
    unsplit = [{"id": "a"}, {"id": "b"}]
    assert split_records(unsplit, "train") == unsplit and split_records(unsplit, "val") == []


@pytest.mark.parametrize("data, message", [
    (b'{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "\xff"}\n', r"m\.jsonl:2: not UTF-8 text"),
    (b'{"image": "a.png", "caption": "a \\ud800 b"}\n', r"m\.jsonl:1: holds a lone surrogate '\\ud800'"),
    (b"", r"m\.jsonl: the manifest holds no records"),
    (b"\n  \n", r"m\.jsonl: the manifest holds no records"),
])
def test_unreadable_text_and_empty_manifests_are_named(tmp_path, data, message):
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_write_refuses_a_lone_surrogate_before_touching_the_file(tmp_path):
    path = write_manifest([{"image": "a.png", "caption": "kept"}], tmp_path / "m.jsonl")
    before = path.read_bytes()
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: holds a lone surrogate"):
        write_manifest([{"image": "a.png", "caption": "fine"}, {"image": "b.png", "caption": "x\ud800"}], path)
    assert path.read_bytes() == before
