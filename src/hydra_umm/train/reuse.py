"""Finished runs reused: a run folder whose model exists is reused when it was asked for the same
settings, and refused (with the settings named) when it was asked for others, rather than silently
reused or overwritten. ``record_stage`` notes what a run is asked for, before it trains, beside the
run's own config.yaml (which holds what its recipe made of it); ``train_once`` does both in order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import yaml

from hydra_umm.config import Config, to_dict

log = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.safetensors"
ASKED_FILE = "asked.yaml"  # the config a run was asked for (record_stage)
# Config keys that name places (an absolute and a relative output folder differ in them), not settings.
PLACE_KEYS = frozenset({"data", "init", "train.out_dir", "umm.tokenizer_path", "tokenizer.teacher_weights",
                        "harmon.vae_path"})
# Training keys that say how a run is carried out, not what it trains: a resumed run may change them.
HOW_KEYS = frozenset(f"train.{k}" for k in ("resume", "log_every", "val_every", "ckpt_every", "keep_last",
                                             "num_workers", "max_bad_steps", "bf16", "compile",
                                             "activation_checkpointing"))


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_done(cfg: Config, weights: str = MODEL_WEIGHTS) -> bool:
    """Whether the run ``cfg`` describes has finished, i.e. saved ``model/<weights>`` (its model is
    then reused). A finished run that was asked for other settings is refused with them named."""
    run = Path(cfg.train.out_dir)
    if not (run / "model" / weights).is_file():
        return False
    if not (run / ASKED_FILE).is_file():  # finished before runs were recorded: nothing to compare
        log.warning("%s is reused unchecked: it was trained before runs recorded what they were asked for "
                    "(%s); remove it to train it anew with this run's settings", run, ASKED_FILE)
        return True
    refuse_changes(run, yaml.safe_load((run / ASKED_FILE).read_text()), to_dict(cfg),
                   "holds a run trained with other settings", ignore=PLACE_KEYS)
    return True


def refuse_changes(folder: Path, made: dict, wanted: dict, what: str,
                   remedy: str = "remove it to make it again, or choose another output folder",
                   ignore: frozenset[str] = frozenset()) -> None:
    """Raise a ValueError naming the settings of ``wanted`` that ``made`` (what ``folder`` was made
    with) holds with another value, both settings trees compared by dotted key; keys in ``ignore``
    and keys ``made`` lacks (settings added since) count as the same."""
    made, wanted = _flat(made), _flat(wanted)
    changed = [k for k in wanted if k not in ignore and k in made and made[k] != wanted[k]]
    if changed:
        named = "; ".join(f"{k}: {made[k]!r} there, {wanted[k]!r} now" for k in changed[:4])
        more = "; ..." if len(changed) > 4 else ""
        raise ValueError(f"{folder} {what} ({named}{more}): {remedy}")


def record_stage(cfg: Config) -> None:
    """Note in a run's folder, before it trains, the config it is asked for (for :func:`is_done`)."""
    run = Path(cfg.train.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / ASKED_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def train_once(cfg: Config, train: Callable[[Config], object], announce: Optional[Callable[[], None]] = None,
               weights: str = MODEL_WEIGHTS) -> Path:
    """The model directory of the run ``cfg`` describes: reused when it has finished (:func:`is_done`),
    else trained by ``train(cfg)`` after ``announce()`` and :func:`record_stage`."""
    if not is_done(cfg, weights):
        if announce is not None:
            announce()
        record_stage(cfg)
        train(cfg)
    return Path(cfg.train.out_dir) / "model"
