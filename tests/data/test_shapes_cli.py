"""`hydra-umm shapes make` / `shapes score` end to end, in-process, on a small data set; the
manifests go back through the project's loader (read_manifest)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hydra_umm.cli import main
from hydra_umm.data.manifest import read_manifest
from hydra_umm.data.shapes import HELDOUT_PAIRS, Scene, render
from hydra_umm.data.shapes.writer import split_sizes

N, SIZE = 40, 64


def make(out, seed=3):
    main(["shapes", "make", "--out", str(out), "--n", str(N), "--size", str(SIZE), "--seed", str(seed),
          "--prompts-per-tag", "4"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make(out)
    return out


def test_make_writes_manifests_images_and_prompts(dataset, capsys):
    summary = json.loads((dataset / "summary.json").read_text())
    assert summary["scenes"] == split_sizes(N) and sum(summary["scenes"].values()) == N
    for split, count in summary["scenes"].items():
        records = read_manifest(dataset / f"{split}.jsonl")
        assert len(records) == count and all(r["split"] == split for r in records)
        for r in records[:3]:
            with Image.open(r["image"]) as im:
                assert im.size == (SIZE, SIZE)
            scene = Scene.from_dict(r["scene"])  # the scene record renders to the stored image
            assert np.array_equal(np.asarray(render(scene, SIZE)), np.asarray(Image.open(r["image"]).convert("RGB")))
            assert r["caption"] and r["qa"]
    prompts = [json.loads(line) for line in (dataset / "evaluation_metadata.jsonl").read_text().splitlines()]
    assert len(prompts) == summary["prompts"] == len(list((dataset / "reference").iterdir()))
    assert {p["tag"] for p in prompts} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(set(p) <= {"tag", "include", "exclude", "prompt"} for p in prompts)


def test_splits_share_no_scene_and_hold_out_compositions(dataset):
    records = {s: read_manifest(dataset / f"{s}.jsonl") for s in ("train", "val", "test", "heldout")}
    keys = {s: {Scene.from_dict(r["scene"]).key() for r in rs} for s, rs in records.items()}
    ids = [r["id"] for rs in records.values() for r in rs]
    assert len(set(ids)) == len(ids) == N
    assert sum(len(k) for k in keys.values()) == N  # no scene repeated, within or across splits
    held = {f"{c} {s}" for c, s in HELDOUT_PAIRS}
    for split in ("train", "val", "test"):
        for r in records[split]:
            assert not Scene.from_dict(r["scene"]).pairs() & set(HELDOUT_PAIRS)
            text = " ".join([r["caption"]] + [qa["question"] for qa in r["qa"]])
            assert not any(re.search(rf"\b{h}", text) for h in held), text
    assert all(Scene.from_dict(r["scene"]).pairs() & set(HELDOUT_PAIRS) for r in records["heldout"])
    heldout_prompts = (dataset / "evaluation_metadata_heldout.jsonl").read_text()
    assert all(h in heldout_prompts for h in held)
    assert not any(h in (dataset / "generation_prompts.txt").read_text() for h in held)


def test_make_is_deterministic(dataset, tmp_path):
    make(tmp_path / "again")
    for name in ("train.jsonl", "heldout.jsonl", "evaluation_metadata.jsonl"):
        assert (tmp_path / "again" / name).read_text() == (dataset / name).read_text()
    for path in sorted((dataset / "images").iterdir())[:5]:
        assert (tmp_path / "again" / "images" / path.name).read_bytes() == path.read_bytes()
    make(tmp_path / "other", seed=4)
    assert (tmp_path / "other" / "train.jsonl").read_text() != (dataset / "train.jsonl").read_text()


def test_score_on_reference_renderings(dataset, tmp_path, capsys):
    out = tmp_path / "scores.json"
    main(["shapes", "score", "--images", str(dataset / "reference"),
          "--metadata", str(dataset / "evaluation_metadata.jsonl"), "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["overall"] >= 0.99 and result["images"] == json.loads((dataset / "summary.json").read_text())["prompts"]
    assert "overall" in printed and "position" in printed
    main(["shapes", "score", "--images", str(dataset / "reference_heldout"),
          "--metadata", str(dataset / "evaluation_metadata_heldout.jsonl"), "--out", str(out)])
    held = json.loads(out.read_text())
    assert held["overall"] >= 0.99 and set(held["categories"]) == {"colors", "color_attr"}


def test_bad_arguments_exit_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["shapes", "make", "--out", str(tmp_path / "x"), "--n", "2"])
    assert e.value.code == 2 and "at least 4 scenes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shapes", "make", "--out", str(tmp_path / "y"), "--n", "8", "--size", "4"])
    assert "image size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shapes", "score", "--images", str(tmp_path), "--metadata", str(tmp_path / "none.jsonl")])
    assert "metadata file not found" in capsys.readouterr().err


def contents(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_over_another_data_set_or_other_files_refuses_and_keeps_them(dataset, tmp_path, capsys):
    kept = contents(dataset)
    with pytest.raises(SystemExit) as e:
        main(["shapes", "make", "--out", str(dataset), "--n", "8", "--size", str(SIZE), "--seed", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{dataset} already holds another shapes data set (scenes={N}," in err
    assert "asked for scenes=8," in err and "remove it or choose another folder" in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        make(other)
    assert "not empty and holds no shapes data set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make(other / "notes.txt")
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make(other / "notes.txt" / "sub")
    assert "cannot make the folder" in capsys.readouterr().err
    assert contents(dataset) == kept and contents(other) == {Path("notes.txt"): b"mine"}


def test_the_same_request_is_made_again_in_place(dataset, tmp_path):
    kept = contents(dataset)
    make(dataset)  # the same settings: the same files, none left over
    assert contents(dataset) == kept
    (dataset / "summary.json").unlink()  # as if the first write had been interrupted
    make(dataset)
    assert contents(dataset) == kept
