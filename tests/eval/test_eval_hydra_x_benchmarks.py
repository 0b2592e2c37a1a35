"""HYDRA-X's benchmark writers lay outputs out as ImgEdit, GEdit-Bench and VBench read them; the
shapes-world edit evaluation scores in-process; the lmms-eval adapter answers about video paths."""

import json

import pytest
from PIL import Image

from hydra_umm.data.shapes.edits import EXACT_PSNR
from hydra_umm.data.video import read_frames, sample_frames, write_clip
from hydra_umm.eval.benchmarks import (EditSettings, GenerationSettings, evaluate_shapes_edit, write_gedit,
                                       write_imgedit, write_vbench)
from hydra_umm.eval.lmms import HydraLMMs


def test_imgedit_writes_one_png_per_key(tmp_path, fake_pipeline):
    (tmp_path / "images" / "animal").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(tmp_path / "images" / "animal" / "cat.jpg")
    annotations = {"1082": {"id": "animal/cat.jpg", "prompt": "add a hat", "edit_type": "add"},
                   "17": {"id": "animal/cat.jpg", "prompt": "remove the cat", "edit_type": "remove"}}
    (tmp_path / "basic_edit.json").write_text(json.dumps(annotations))
    out = write_imgedit(fake_pipeline, tmp_path / "basic_edit.json", tmp_path / "images", tmp_path / "out",
                        EditSettings(steps=3, image_cfg_scale=1.2, seed=5))
    assert sorted(p.name for p in out.iterdir()) == ["1082.png", "17.png"]
    assert [c[1][1] for c in fake_pipeline.calls] == [["add a hat"], ["remove the cat"]]
    assert fake_pipeline.calls[0][2] == {"steps": 3, "cfg_scale": None, "image_cfg_scale": 1.2, "seed": 5}
    (tmp_path / "bad.json").write_text(json.dumps({"3": {"prompt": "x"}}))
    with pytest.raises(ValueError, match=r"'3' misses \['id'\]"):
        write_imgedit(fake_pipeline, tmp_path / "bad.json", tmp_path / "images", tmp_path / "out")


def test_gedit_writes_fullset_layout_with_source_images(tmp_path, fake_pipeline):
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "a.png")
    records = [{"key": "k1", "task_type": "color_alter", "instruction": "make it red", "instruction_language": "en",
                "input_image": "a.png"},
               {"key": "k2", "task_type": "subject-add", "instruction": "加一只猫", "instruction_language": "cn",
                "input_image": "a.png"}]
    (tmp_path / "gedit.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    out = write_gedit(fake_pipeline, tmp_path / "gedit.jsonl", tmp_path / "out")
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["fullset/color_alter/en/k1.png", "fullset/color_alter/en/k1_SRCIMG.png",
                       "fullset/subject-add/cn/k2.png", "fullset/subject-add/cn/k2_SRCIMG.png"]
    english = write_gedit(fake_pipeline, tmp_path / "gedit.jsonl", tmp_path / "en", language="en")
    assert not (english / "fullset" / "subject-add").exists()


def test_vbench_writes_five_clips_per_prompt(tmp_path, fake_pipeline):
    (tmp_path / "VBench_full_info.json").write_text(json.dumps([{"prompt_en": "a dog running", "dimension": ["x"]},
                                                                {"prompt_en": "a red square moves left"}]))
    out = write_vbench(fake_pipeline, tmp_path / "VBench_full_info.json", tmp_path / "out", frames=5,
                       settings=GenerationSettings(seed=10))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{p}-{i}.mp4" for p in ("a dog running", "a red square moves left") for i in range(5))
    assert len(read_frames(out / "a dog running-0.mp4")) == 5
    seeds = [c[2]["seed"] for c in fake_pipeline.calls if c[0] == "generate_video"]
    assert seeds == [10, 11, 12, 13, 14] * 2


def test_shapes_edit_evaluation_scores_and_saves(tmp_path, make_fake_pipeline):
    """The fake pipeline returns the source (one pixel changed): every object is kept, nothing is
    edited, so only kept is 1, and Recon-PSNR is high."""
    pipe = make_fake_pipeline(size=64)
    result = evaluate_shapes_edit(pipe, n=7, out_dir=tmp_path, batch_size=4)
    summary = result["summary"]
    assert summary["overall"]["n"] == 7 and set(summary) == {"overall", "add", "remove", "replace", "alter", "move",
                                                              "background", "count"}
    assert summary["overall"]["kept"] == 1.0 and summary["overall"]["edit_score"] == 0.0
    assert summary["overall"]["recon_psnr"] > 30
    assert (tmp_path / "0006_edited.png").is_file()
    written = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    exact = [i for i, r in enumerate(result["results"]) if r["recon_psnr"] == float("inf")]
    assert exact and all(written["results"][i]["recon_psnr"] == EXACT_PSNR for i in exact)  # standard JSON


def test_lmms_adapter_answers_about_video_paths(tmp_path, make_fake_pipeline):
    write_clip([Image.new("RGB", (16, 16), (20 * i, 0, 0)) for i in range(9)], tmp_path / "clip.mp4")

    class Instance:
        def __init__(self, *args):
            self.args = args

    pipe = make_fake_pipeline(replies={"What moves?": "(A) the square"})
    model = HydraLMMs(pipe, batch_size=4, frames=5)
    docs = [{"video": str(tmp_path / "clip.mp4")}, {"video": Image.new("RGB", (16, 16))}]
    model.task_dict = {"mvbench": {"test": docs}}
    visual = lambda doc: [doc["video"]]  # noqa: E731
    replies = model.generate_until([Instance("What moves?", {"until": [")"]}, visual, 0, "mvbench", "test"),
                                    Instance("What moves?", {}, visual, 1, "mvbench", "test")])
    assert replies == ["(A", "(A) the square"]
    video_call, image_call = (c for c in pipe.calls if c[0] == "answer")
    assert video_call[2].get("videos") and "videos" not in image_call[2]  # a clip and an image: two calls
    assert sample_frames(list(range(9)), 5) == [0, 2, 4, 6, 8] and sample_frames([7, 8], 3) == [7, 7, 8]
    calls = []

    def loglikelihood(images, contexts, continuations, videos=None):
        calls.append((images is None, None if videos is None else [len(v) for v in videos], continuations))
        return [(-1.0, True)] * len(contexts)

    pipe.loglikelihood = loglikelihood
    scores = model.loglikelihood([Instance("What moves?", " (A)", visual, i, "mvbench", "test") for i in (0, 0, 1)])
    assert scores == [(-1.0, True)] * 3
    assert calls == [(True, [5, 5], [" (A)", " (A)"]), (False, None, [" (A)"])]  # clips together, then the image
