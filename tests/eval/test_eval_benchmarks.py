import json
import re

import pytest
from PIL import Image

from hydra_umm.eval.benchmarks import (
    GenerationSettings,
    evaluate_shapes_geneval,
    evaluate_shapes_vqa,
    write_dpg,
    write_geneval,
    write_wise,
)
from hydra_umm.eval.benchmarks.shapes_geneval import score_shapes_image
from hydra_umm.eval.benchmarks.shapes_vqa import is_correct, match_choice, score_answers

GENEVAL = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "counting", "include": [{"class": "square", "count": 2}], "exclude": [{"class": "square", "count": 3}],
     "prompt": "a photo of two squares"},
]


@pytest.fixture
def geneval_file(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in GENEVAL) + "\n")
    return path


def test_geneval_layout_is_what_its_evaluator_reads(fake_pipeline, geneval_file, tmp_path):
    settings = GenerationSettings(steps=3, cfg_scale=2.0, sampler="euler", seed=7)
    out = write_geneval(fake_pipeline, geneval_file, tmp_path / "out", n_samples=3, settings=settings)
    # evaluation/evaluate_images.py: all-digit folders, json.load of metadata.jsonl, samples/\d+.png
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    assert folders == ["00000", "00001"]
    for index, folder in enumerate(folders):
        with open(out / folder / "metadata.jsonl") as fp:
            assert json.load(fp) == GENEVAL[index]
        samples = sorted(p.name for p in (out / folder / "samples").iterdir())
        assert samples == ["00000.png", "00001.png", "00002.png"]
        assert all(re.match(r"\d+\.png", s) for s in samples)
    assert fake_pipeline.calls[0] == ("generate", (["a photo of a circle"] * 3,),
                                      {"steps": 3, "cfg_scale": 2.0, "sampler": "euler", "seed": 7})
    # the image of sample j is the pipeline's j-th output for this prompt
    expected = fake_pipeline.generate(["a photo of two squares"] * 3, seed=7)[2]
    assert Image.open(out / "00001" / "samples" / "00002.png").getpixel((0, 0)) == expected.getpixel((0, 0))
    # a second run into the same folder leaves none of the first run's samples behind
    write_geneval(fake_pipeline, geneval_file, out, n_samples=1, settings=settings)
    assert sorted(p.name for p in (out / "00001" / "samples").iterdir()) == ["00000.png"]


def test_geneval_metadata_errors_are_named(fake_pipeline, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a circle"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*tag"):
        write_geneval(fake_pipeline, bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="GenEval metadata"):
        write_geneval(fake_pipeline, tmp_path / "missing.jsonl", tmp_path / "out")


def test_dpg_writes_a_2x2_grid_per_prompt(fake_pipeline, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "item_a.txt").write_text("a red circle above a blue square\n")
    (prompts / "item_b.txt").write_text("three green triangles")
    out = write_dpg(fake_pipeline, prompts, tmp_path / "dpg", resolution=16)
    assert sorted(p.name for p in out.iterdir()) == ["item_a.png", "item_b.png"]  # nothing else in the folder
    grid = Image.open(out / "item_a.png")
    assert grid.size == (32, 32)
    tiles = fake_pipeline.generate(["a red circle above a blue square"] * 4, seed=0)
    # compute_dpg_bench.py's crops at --resolution 16: (0,0), (r,0), (0,r), (r,r)
    crops = [(0, 0, 16, 16), (16, 0, 32, 16), (0, 16, 16, 32), (16, 16, 32, 32)]
    for tile, box in zip(tiles, crops):
        assert grid.crop(box).getpixel((8, 8)) == tile.getpixel((8, 8))


def test_wise_names_images_by_prompt_id(fake_pipeline, tmp_path):
    items = [{"prompt_id": 1, "Prompt": "the flag of a country", "Explanation": "...", "Subcategory": "Culture"},
             {"prompt_id": 2, "Prompt": "ice at 30 degrees", "Explanation": "...", "Subcategory": "Physics"}]
    (tmp_path / "a.json").write_text(json.dumps(items[:1]))
    (tmp_path / "b.json").write_text(json.dumps(items[1:]))
    out = write_wise(fake_pipeline, [tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "wise")
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png"]  # gpt_eval.py: <image_dir>/<prompt_id>.png
    (tmp_path / "c.json").write_text(json.dumps(items[:1]))
    with pytest.raises(ValueError, match="prompt_id 1 appears twice"):
        write_wise(fake_pipeline, [tmp_path / "a.json", tmp_path / "c.json"], tmp_path / "wise2")


def test_shapes_geneval_scores_the_written_folder(fake_pipeline, geneval_file, tmp_path):
    seen = {}

    def scorer(images_dir, metadata_file):
        seen["dirs"] = sorted(p.name for p in images_dir.iterdir())
        seen["metadata"] = metadata_file
        return {"overall": 0.5}

    result = evaluate_shapes_geneval(fake_pipeline, geneval_file, tmp_path / "g", n_samples=1, scorer=scorer)
    assert result == {"overall": 0.5}
    assert seen == {"dirs": ["00000", "00001"], "metadata": geneval_file}


def test_choice_matching():
    choices = ["red", "dark blue", "green"]
    assert match_choice("Dark blue.", choices) == "dark blue"
    assert match_choice("It is green", choices) == "green"
    assert match_choice("red or green", choices) is None  # ambiguous
    assert match_choice("purple", choices) is None
    assert match_choice("10", ["1", "2", "3", "4"]) is None  # whole words only
    assert not is_correct("red or green", {"answer": "red", "choices": ["red", "green"]})
    assert is_correct("a circle", {"answer": "circle"}) and not is_correct("a square", {"answer": "circle"})


def test_score_answers_per_type_and_majority_baseline():
    qas = [{"question": "q1", "answer": "red", "type": "color", "choices": ["red", "blue"]},
           {"question": "q2", "answer": "red", "type": "color", "choices": ["red", "blue"]},
           {"question": "q3", "answer": "blue", "type": "color", "choices": ["red", "blue"]},
           {"question": "q4", "answer": "2", "type": "count"},
           {"question": "q5", "answer": "3", "type": "count"}]
    result = score_answers(qas, ["blue", "The red one.", "blue", "2", "two"])
    assert result["per_type"]["color"] == {"n": 3, "accuracy": pytest.approx(2 / 3), "majority_answer": "red",
                                           "majority_baseline": pytest.approx(2 / 3)}
    assert result["per_type"]["count"]["accuracy"] == 0.5
    assert result["per_type"]["count"]["majority_baseline"] == 0.5
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["majority_baseline"] == pytest.approx(3 / 5)


def test_shapes_vqa_asks_the_pipeline(shapes_like_images, make_fake_pipeline):
    records = [{"image": str(shapes_like_images[0]), "caption": "x",
                "qa": [{"question": "What colour is the circle?", "answer": "green", "type": "color",
                        "choices": ["red", "green"]},
                       {"question": "How many shapes?", "answer": "1", "type": "count"}]},
               {"image": str(shapes_like_images[1]), "caption": "y",
                "qa": [{"question": "Is there a square?", "answer": "no", "type": "existence"}]}]
    # the model is asked the training prompt: a multiple-choice question lists its choices
    pipeline = make_fake_pipeline(replies={"What colour is the circle?\nChoices: red, green": "Green.",
                                           "How many shapes?": "2"})
    result = evaluate_shapes_vqa(pipeline, records, max_new_tokens=5, batch_size=2)
    assert [pipeline.calls[0][1][0], pipeline.calls[1][1][0]] == [2, 1]  # batches of 2, then 1
    assert pipeline.calls[0][2] == {"max_new_tokens": 5, "temperature": 0.0, "seed": 0}
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert {t: v["accuracy"] for t, v in result["per_type"].items()} == {"color": 1.0, "count": 0.0, "existence": 0.0}
    assert [a["correct"] for a in result["answers"]] == [True, False, False]

    # questions about clips: records may hold only their clip, shown in the answers by its first frame
    frames = [Image.new("RGB", (8, 8), (255, 0, 0))] * 5
    clips = [{"video": frames, "qa": [{"question": "What moves?", "answer": "red", "type": "video"}]}]
    result = evaluate_shapes_vqa(make_fake_pipeline(replies={"What moves?": "red"}), clips, frames=5)
    assert result["accuracy"] == 1.0 and result["answers"][0]["image"] is frames[0]

    # of a longer clip the pipeline sees `frames` of them spread evenly, as training reads them
    class Recorder:
        def answer(self, videos, questions, **_):
            self.videos = videos
            return ["red"] * len(questions)

    longer = [Image.new("RGB", (8, 8), (25 * i, 0, 0)) for i in range(9)]
    recorder = Recorder()
    evaluate_shapes_vqa(recorder, [{"video": longer, "qa": clips[0]["qa"]}], frames=5)
    assert recorder.videos == [longer[::2]]


def test_shapes_geneval_with_the_shapes_scorer_end_to_end(tmp_path):
    """An oracle pipeline that renders each prompt's ground-truth scene scores high with the shapes
    world's own scorer; one that draws blank images does not (so the layout is what it reads)."""
    shapes = pytest.importorskip("hydra_umm.data.shapes")
    import numpy as np

    metadata = shapes.generate_prompts(np.random.default_rng(0), per_tag=1)
    metadata_file = tmp_path / "shapes_geneval.jsonl"
    metadata_file.write_text("\n".join(json.dumps(m) for m in metadata) + "\n")
    by_prompt = {m["prompt"]: m for m in metadata}

    class Oracle:
        def generate(self, prompts, seed=0, **kwargs):
            rng = np.random.default_rng(seed)
            return [shapes.render_prompt(by_prompt[p], rng, size=64)[0] for p in prompts]

    class Blank:
        def generate(self, prompts, **kwargs):
            return [Image.new("RGB", (64, 64), "white") for _ in prompts]

    good = evaluate_shapes_geneval(Oracle(), metadata_file, tmp_path / "oracle", n_samples=2)
    bad = evaluate_shapes_geneval(Blank(), metadata_file, tmp_path / "blank", n_samples=2)
    assert good["images"] == bad["images"] == 2 * len(metadata)
    assert good["overall"] > 0.9 and bad["overall"] < 0.1
    # the per-image score the report shows beside each sample
    rng = np.random.default_rng(1)
    assert score_shapes_image(shapes.render_prompt(metadata[0], rng, size=64)[0], metadata[0]) == 1.0
    assert score_shapes_image(Image.new("RGB", (64, 64), (230, 230, 230)), metadata[0]) == 0.0
