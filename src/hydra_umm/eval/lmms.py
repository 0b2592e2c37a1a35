"""lmms-eval adapter: lets lmms-eval (EvolvingLMMs-Lab/lmms-eval) evaluate a HydraPipeline.

lmms-eval's model API (``lmms_eval/api/model.py``, class ``lmms``) calls, with lists of
``Instance`` whose ``args`` are

* ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``, where
  ``doc_to_visual(self.task_dict[task][split][doc_id])`` gives the document's images and
  ``gen_kwargs`` may hold ``until``, ``max_new_tokens``, ``temperature``, ``do_sample``;
  returns one string per request, cut at the first ``until`` string.
* ``loglikelihood``: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``, the
  continuation being ``doc_to_target`` (a string) or ``doc_to_target(doc)``; returns
  ``(log p(continuation | image, context), is_greedy)`` per request.
* ``generate_until_multi_round``: abstract in ``lmms``; HYDRA's pipeline answers one turn, so
  it raises ``NotImplementedError`` saying so.

Generation goes through ``pipeline.answer(images, questions, max_new_tokens=, temperature=, seed=)``
and scoring through ``pipeline.loglikelihood(images, contexts, continuations)`` (lmms-eval's
multiple-choice tasks). One visual per document: a PIL image, or (HYDRA-X; video tasks such as
MVBench hand a video path) a video file or frame folder, of which ``frames`` frames spread evenly
over the clip are answered about (``videos=``).

lmms_eval is imported only by ``register``: with the package installed, ``register()`` makes the
class an ``lmms`` subclass registered as ``"hydra"``; an instance can also be handed directly to
``lmms_eval.evaluator.simple_evaluate(model=...)``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from hydra_umm.data.video import read_frames, sample_frames

DEFAULT_MAX_NEW_TOKENS = 128


class HydraLMMs:
    """The methods lmms-eval calls on a model, operating on a HydraPipeline (given, or loaded from
    ``pretrained`` onto ``device``). Other lmms-eval model arguments are accepted and ignored."""

    def __init__(self, pipeline: Any = None, pretrained: str | None = None, device: str = "cpu",
                 batch_size: int = 1, seed: int = 0, frames: int = 17, **_: Any) -> None:
        super().__init__()  # lmms.__init__ when registered with lmms-eval, object.__init__ otherwise
        if pipeline is None:
            if pretrained is None:
                raise ValueError("HydraLMMs needs a pipeline object or pretrained=<model directory>")
            from hydra_umm.inference import HydraPipeline

            pipeline = HydraPipeline.from_pretrained(pretrained, device=device)
        self.pipeline = pipeline
        self.batch_size = int(batch_size)
        self.seed, self.frames = int(seed), int(frames)
        self.task_dict: dict = getattr(self, "task_dict", {})  # filled by lmms-eval's evaluator

    def _visual(self, doc_to_visual: Callable, doc_id: Any, task: str, split: str) -> tuple[str, Any]:
        """The document's one visual: ("images", a PIL image) or ("videos", ``frames`` PIL frames)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if len(visuals) == 1 and isinstance(visuals[0], Image.Image):
            return "images", visuals[0].convert("RGB")
        if len(visuals) == 1 and isinstance(visuals[0], (str, Path)):
            return "videos", sample_frames(read_frames(visuals[0]), self.frames)
        raise ValueError(
            f"{task}/{split}/{doc_id}: HydraPipeline answers about exactly one PIL image or one video path per "
            f"question, got {len(visuals)} visual(s) of type(s) {[type(v).__name__ for v in visuals]}"
        )

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy (or sampled, when asked) replies, each cut at its first ``until`` string."""
        parsed = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            kind, visual = self._visual(doc_to_visual, doc_id, task, split)
            settings = (int(kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)), temperature, kind)
            parsed.append((visual, context, until, settings))
        replies: list[str] = []
        start = 0
        while start < len(parsed):  # batches of consecutive requests sharing generation settings and visual kind
            stop = start + 1
            while stop < len(parsed) and stop - start < self.batch_size and parsed[stop][3] == parsed[start][3]:
                stop += 1
            chunk = parsed[start:stop]
            max_new_tokens, temperature, kind = chunk[0][3]
            out = self.pipeline.answer(questions=[c[1] for c in chunk], max_new_tokens=max_new_tokens,
                                       temperature=temperature, seed=self.seed, **{kind: [c[0] for c in chunk]})
            replies.extend(_cut(text, until) for text, (_, _, until, _) in zip(out, chunk))
            start = stop
        return replies

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding would produce it) per request;
        consecutive requests about images (or about clips) are scored together, ``batch_size`` per call."""
        parsed = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            kind, visual = self._visual(doc_to_visual, doc_id, task, split)
            parsed.append((kind, visual, context, doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)))
        scores = []
        for kind, run in itertools.groupby(parsed, key=lambda p: p[0]):
            run = list(run)
            for start in range(0, len(run), self.batch_size):
                chunk = run[start: start + self.batch_size]
                visuals, contexts, continuations = ([r[i] for r in chunk] for i in (1, 2, 3))
                out = (self.pipeline.loglikelihood(visuals, contexts, continuations) if kind == "images"
                       else self.pipeline.loglikelihood(None, contexts, continuations, videos=visuals))
                scores += [(float(lp), bool(greedy)) for lp, greedy in out]
        return scores

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(
            "HydraPipeline.answer is single-turn; lmms-eval's multi-round tasks are not supported"
        )


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the earliest stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def register(name: str = "hydra") -> type | None:
    """Register an ``lmms`` subclass of HydraLMMs with lmms-eval under ``name``; returns it, or
    ``None`` when lmms_eval is not installed."""
    try:
        from lmms_eval.api.model import lmms
        from lmms_eval.api.registry import register_model
    except ImportError:
        return None
    return register_model(name)(type("HydraLMMsModel", (HydraLMMs, lmms), {}))
