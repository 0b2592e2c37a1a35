from dataclasses import dataclass

import pytest
from PIL import Image

from hydra_umm.eval.lmms import HydraLMMs, register


@dataclass
class FakeInstance:
    """Shaped like lmms_eval.api.instance.Instance: the model reads only ``args``."""

    request_type: str
    arguments: tuple

    @property
    def args(self):
        return self.arguments


DOCS = [{"img": Image.new("RGB", (8, 8), "red"), "answer": "red"},
        {"img": Image.new("RGB", (8, 8), "blue"), "answer": "blue"},
        {"img": None, "answer": "none"}]


def doc_to_visual(doc):
    return [doc["img"]]


@pytest.fixture
def adapter(make_fake_pipeline):
    pipeline = make_fake_pipeline(replies={"Colour?": "red\nQuestion: more", "Shape?": "circle.</s>junk"})
    model = HydraLMMs(pipeline, batch_size=4, seed=3)
    model.task_dict = {"toy": {"test": DOCS}}
    return model


def test_generate_until_cuts_at_stop_strings_and_batches_by_settings(adapter):
    greedy = {"until": ["\n", "Question:"], "max_new_tokens": 8}
    requests = [FakeInstance("generate_until", ("Colour?", greedy, doc_to_visual, 0, "toy", "test")),
                FakeInstance("generate_until", ("Shape?", {"until": "</s>", "max_new_tokens": 8}, doc_to_visual, 1,
                                                "toy", "test")),
                FakeInstance("generate_until", ("Colour?", {"max_new_tokens": 4, "do_sample": True, "temperature": 0.7},
                                                doc_to_visual, 1, "toy", "test"))]
    assert adapter.generate_until(requests) == ["red", "circle.", "red\nQuestion: more"]
    calls = adapter.pipeline.calls
    assert [c[1] for c in calls] == [(2, ["Colour?", "Shape?"]), (1, ["Colour?"])]
    assert calls[0][2] == {"max_new_tokens": 8, "temperature": 0.0, "seed": 3}
    assert calls[1][2] == {"max_new_tokens": 4, "temperature": 0.7, "seed": 3}


def test_generate_until_needs_exactly_one_image(adapter):
    request = FakeInstance("generate_until", ("Colour?", {}, doc_to_visual, 2, "toy", "test"))
    with pytest.raises(ValueError, match="toy/test/2.*exactly one PIL image"):
        adapter.generate_until([request])


def test_loglikelihood_resolves_continuations(adapter):
    seen = {}

    def loglikelihood(images, contexts, continuations):
        seen.update(images=images, contexts=contexts, continuations=continuations)
        return [(-1.5, True), (-0.25, False)]

    adapter.pipeline.loglikelihood = loglikelihood
    requests = [FakeInstance("loglikelihood", ("Colour?", " red", doc_to_visual, 0, "toy", "test")),
                FakeInstance("loglikelihood", ("Colour?", lambda doc: " " + doc["answer"], doc_to_visual, 1, "toy",
                                               "test"))]
    assert adapter.loglikelihood(requests) == [(-1.5, True), (-0.25, False)]
    assert seen["continuations"] == [" red", " blue"] and seen["contexts"] == ["Colour?", "Colour?"]
    assert [im.getpixel((0, 0)) for im in seen["images"]] == [(255, 0, 0), (0, 0, 255)]


def test_loglikelihood_scores_batch_size_requests_per_call(adapter):
    sizes = []

    def loglikelihood(images, contexts, continuations):
        sizes.append(len(contexts))
        return [(-float(len(c)), True) for c in continuations]

    adapter.pipeline.loglikelihood = loglikelihood
    requests = [FakeInstance("loglikelihood", ("Colour?", " " + "x" * i, doc_to_visual, i % 2, "toy", "test"))
                for i in range(10)]
    assert adapter.loglikelihood(requests) == [(-float(i + 1), True) for i in range(10)]  # in request order
    assert sizes == [4, 4, 2]  # adapter.batch_size


def test_unsupported_requests_say_why(make_fake_pipeline):
    model = HydraLMMs(make_fake_pipeline())
    model.task_dict = {"toy": {"test": DOCS}}
    with pytest.raises(NotImplementedError, match="single-turn"):
        model.generate_until_multi_round([])
    with pytest.raises(ValueError, match="pipeline object or pretrained"):
        HydraLMMs()


def test_register_only_with_lmms_eval():
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        assert register() is None
    else:
        cls = register("hydra_test")
        from lmms_eval.api.model import lmms

        assert issubclass(cls, lmms) and issubclass(cls, HydraLMMs)
