"""Shapes-world question answering, evaluated in-process.

Input: manifest records (``hydra_umm.data.manifest``) whose ``qa`` lists hold
``{"question", "answer", "type", "choices"?}``, and a pipeline with
``answer(images, questions, max_new_tokens=, temperature=, seed=) -> list[str]``.
The model is asked :func:`~hydra_umm.data.datasets.question_prompt`, the prompt training uses.
A question with ``choices`` is multiple choice: the reply counts when it names the right choice
(equal after normalisation, or the only choice it contains); otherwise it is open-answer and the
normalised reply must equal the normalised answer. Normalisation: lower case, no punctuation,
no articles, single spaces. Greedy decoding (temperature 0).

Reported per question type and overall: accuracy, count, and the majority-answer baseline (the
accuracy of always giving the type's most frequent answer on the same questions).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Iterable

from PIL import Image

from hydra_umm.data.datasets import load_image, question_prompt
from hydra_umm.data.video import read_frames, sample_frames

ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ARTICLES)


def match_choice(prediction: str, choices: list[str]) -> str | None:
    """The normalised choice a reply names: an exact match, else the only choice it contains."""
    pred = normalize_answer(prediction)
    options = [normalize_answer(c) for c in choices]
    if pred in options:
        return pred
    contained = [o for o in options if re.search(rf"\b{re.escape(o)}\b", pred)]
    return contained[0] if len(contained) == 1 else None


def is_correct(prediction: str, qa: dict) -> bool:
    """Whether a reply answers one QA item (multiple choice when it has ``choices``)."""
    if qa.get("choices"):
        return match_choice(prediction, qa["choices"]) == normalize_answer(qa["answer"])
    return normalize_answer(prediction) == normalize_answer(qa["answer"])


def score_answers(qas: list[dict], predictions: list[str]) -> dict:
    """Accuracy and majority baseline per type and overall from QA items and the replies to them."""
    if len(qas) != len(predictions):
        raise ValueError(f"{len(qas)} questions but {len(predictions)} predictions")
    if not qas:
        raise ValueError("no questions to score")
    by_type: dict[str, list[tuple[dict, bool]]] = defaultdict(list)
    for qa, pred in zip(qas, predictions):
        by_type[qa.get("type", "untyped")].append((qa, is_correct(pred, qa)))
    per_type = {}
    for qtype, items in sorted(by_type.items()):
        counts = Counter(normalize_answer(qa["answer"]) for qa, _ in items)
        majority, majority_count = counts.most_common(1)[0]
        per_type[qtype] = {
            "n": len(items),
            "accuracy": sum(ok for _, ok in items) / len(items),
            "majority_answer": majority,
            "majority_baseline": majority_count / len(items),
        }
    n = len(qas)
    return {
        "n": n,
        "accuracy": sum(ok for items in by_type.values() for _, ok in items) / n,
        "majority_baseline": sum(t["majority_baseline"] * t["n"] for t in per_type.values()) / n,
        "per_type": per_type,
    }


def _shown(record: dict) -> Any:
    """What a report shows beside an answer: the record's image (PIL or its path), else its clip's
    first frame or path."""
    shown = record["image"] if "image" in record else record["video"]
    shown = shown[0] if isinstance(shown, list) else shown
    return shown if isinstance(shown, Image.Image) else str(shown)


def evaluate_shapes_vqa(
    pipeline: Any, records: Iterable[dict], max_new_tokens: int = 16, batch_size: int = 16, seed: int = 0,
    frames: int | None = None,
) -> dict:
    """Ask every question of every record, score the replies; the result also lists each reply
    under ``"answers"`` (image, question, answer, prediction, type, correct) for the report. With
    ``frames`` the questions are about the records' clips (``video``: PIL frames or a path; ``frames``
    of them spread evenly, as training reads them, HYDRA-X), else about their images (``image``: a path
    or PIL image)."""
    items = [(record, qa) for record in records for qa in record.get("qa", [])]
    if not items:
        raise ValueError("the records hold no 'qa' items to evaluate")

    def visual(record: dict) -> Any:
        if frames is None:
            image = record["image"]
            return load_image(image)  # a path or a PIL image
        video = record["video"]
        return sample_frames(video if isinstance(video, list) else read_frames(video), frames)

    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        visuals = {"images" if frames is None else "videos": [visual(record) for record, _ in chunk]}
        replies = pipeline.answer(questions=[question_prompt(qa) for _, qa in chunk], max_new_tokens=max_new_tokens,
                                  temperature=0.0, seed=seed, **visuals)
        if len(replies) != len(chunk):
            raise ValueError(f"pipeline.answer returned {len(replies)} replies for {len(chunk)} questions")
        predictions.extend(replies)
    qas = [qa for _, qa in items]
    result = score_answers(qas, predictions)
    result["answers"] = [
        {"image": _shown(record),
         "question": qa["question"], "answer": qa["answer"], "prediction": pred,
         "type": qa.get("type", "untyped"), "correct": is_correct(pred, qa)}
        for (record, qa), pred in zip(items, predictions)
    ]
    return result
