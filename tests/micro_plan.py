"""The demo with a few steps per stage (a module name no other test folder uses): the plan of the
``micro_demo`` fixture, shared by the demo and compare tests, and how to read a value a plan sets."""

from hydra_umm.demo import DemoPlan

MICRO = DemoPlan(
    scenes=80, teacher_steps=2, tokenizer_steps={"1": 2, "2": 1}, umm_steps={"I": 2, "II": 1, "III": 1},
    batch_size=4, eval_images=12, eval_prompts=1, samples_per_prompt=1,
    overrides=("tokenizer.lambda_lpips=0", "tokenizer.decode_steps=2", "umm.flow.steps=2", "harmon.mar_steps=2",
               "harmon.sampling_steps=3"),
)


def planned(overrides, key: str = "train.lr.default") -> float:
    """The value a plan's overrides set for ``key`` (by default the learning rate)."""
    return float(dict(o.split("=", 1) for o in overrides)[key])
