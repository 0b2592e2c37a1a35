"""Finished runs reused: a run folder whose model exists is reused when it was asked for the same
settings, and refused (with the settings named) when it was asked for others, rather than silently
reused or overwritten. ``record_stage`` notes what a run is asked for, before it trains, beside the
run's own config.yaml (which holds what its recipe made of it).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hydra_umm.config import Config, to_dict

MODEL_WEIGHTS = "model.safetensors"
ASKED_FILE = "asked.yaml"  # the config a run was asked for (record_stage)
# Config keys that name places (an absolute and a relative output folder differ in them), not settings.
PLACE_KEYS = frozenset({"data", "init", "train.out_dir", "umm.tokenizer_path", "tokenizer.teacher_weights",
                        "harmon.vae_path"})


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
        return True
    saved, wanted = _flat(yaml.safe_load((run / ASKED_FILE).read_text())), _flat(to_dict(cfg))
    changed = [k for k in sorted(saved.keys() & wanted.keys()) if k not in PLACE_KEYS and saved[k] != wanted[k]]
    if changed:
        named = "; ".join(f"{k}: {saved[k]!r} there, {wanted[k]!r} now" for k in changed[:4])
        more = "; ..." if len(changed) > 4 else ""
        raise ValueError(f"{run} holds a run trained with other settings ({named}{more}): remove that folder "
                         "to train it again, or choose another output folder")
    return True


def record_stage(cfg: Config) -> None:
    """Note in a run's folder, before it trains, the config it is asked for (for :func:`is_done`)."""
    run = Path(cfg.train.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / ASKED_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
