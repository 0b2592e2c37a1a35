"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides.

A preset is a YAML file in ``hydra_umm/configs`` (or any path) whose keys mirror :class:`Config`.
A preset may name another one under ``base:`` and only state what differs. Overrides use dotted
paths (``tokenizer.gen_depth=4``); values are parsed as YAML and checked against the field type.
An unknown key is an error that lists the valid keys at that level; values the model code could not
use (a width its heads do not divide, an unknown sampler, ...) are refused when the config is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from hydra_umm.train.config import ConfigError, TrainConfig, require

PRESET_DIR = Path(__file__).parent / "configs"
# What hydra_umm.flow implements (named here, where configs are checked without importing torch).
SAMPLERS = ("euler", "heun")  # flow.sample's methods
T_SAMPLINGS = ("logit_normal", "uniform")  # flow.sample_t's kinds


def _heads(section: Any, prefix: str, width: str, heads: str) -> None:
    """Refuse a head count (``section.<heads>``) that does not divide its width (``section.<width>``)."""
    w, h = getattr(section, width), getattr(section, heads)
    require(h >= 1 and w % h == 0, prefix + heads, h, f"a divisor of {prefix}{width} = {w}")


def _fraction(section: Any, prefix: str, *names: str) -> None:
    """Refuse probabilities outside [0, 1]."""
    for name in names:
        require(0 <= getattr(section, name) <= 1, prefix + name, getattr(section, name), "in [0, 1]")


@dataclass
class FlowConfig:
    """Flow matching (DESIGN section 2): how training draws t and how sampling integrates."""

    t_sampling: str = "logit_normal"  # "logit_normal" | "uniform"
    t_mean: float = 0.0  # logit-normal location
    t_std: float = 1.0  # logit-normal scale
    sampler: str = "euler"  # "euler" | "heun"
    steps: int = 25
    shift: float = 1.0  # time shift (> 1 spends more steps near noise)

    def check(self, prefix: str) -> None:
        """Raise a ConfigError naming the first value :mod:`hydra_umm.flow` cannot use (keys under ``prefix``)."""
        require(self.t_sampling in T_SAMPLINGS, prefix + "t_sampling", self.t_sampling,
                f"one of {', '.join(T_SAMPLINGS)}")
        require(self.sampler in SAMPLERS, prefix + "sampler", self.sampler, f"one of {', '.join(SAMPLERS)}")
        require(self.steps >= 1, prefix + "steps", self.steps, ">= 1")
        require(0 < self.shift < math.inf, prefix + "shift", self.shift, "a finite number > 0")


@dataclass
class TokenizerConfig:
    """HYDRA-TOK. Defaults are the paper's (timm ``vit_intern300m_patch14_448``); numbers the paper
    text does not give (gen_depth, loss weights, decoder size) are ours."""

    image_size: int = 448
    patch_size: int = 14
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_scale: Union[float, None] = 0.1  # timm init_values; None disables layer-scale
    gen_depth: int = 12  # k: blocks [0, k) are Gen-ViT, [k, depth) Sem-ViT
    latent_dim: int = 64  # c
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # GSB and distillation
    cons_stop_grad: bool = True  # stop-gradient on h in the consistency loss
    distill_layers: list[int] = field(default_factory=lambda: [5, 11, 17, 23])
    # decoder: "flow" (pixel flow decoder, DESIGN section 1) | "vit" (deterministic ViT decoder, section 4)
    decoder: str = "flow"
    decoder_width: int = 1024
    decoder_depth: int = 12
    decoder_heads: int = 16
    decode_steps: int = 25
    disc_width: int = 64  # discriminator base channels (stage 2)
    # loss weights
    lambda_kl: float = 1e-6
    lambda_cons: float = 1.0
    lambda_distill: float = 1.0
    lambda_lpips: float = 1.0
    lambda_l1: float = 1.0  # the ViT decoder's reconstruction term
    lambda_gan: float = 0.1
    flow: FlowConfig = field(default_factory=FlowConfig)
    # local weight files ("" = none): VGG16 for LPIPS, a timm InternViT checkpoint for teacher+student
    lpips_weights: str = ""
    teacher_weights: str = ""

    def check(self) -> None:
        """Raise a ConfigError naming the first value the tokenizer cannot be built or run with."""
        _heads(self, "tokenizer.", "width", "num_heads")
        _heads(self, "tokenizer.", "decoder_width", "decoder_heads")
        require(len(self.image_mean) == 3, "tokenizer.image_mean", self.image_mean, "3 numbers (R, G, B)")
        require(len(self.image_std) == 3 and all(s > 0 for s in self.image_std), "tokenizer.image_std",
                self.image_std, "3 numbers > 0 (R, G, B)")
        self.flow.check("tokenizer.flow.")


@dataclass
class XTokConfig:
    """HYDRA-X's tokenizer for images and videos (DESIGN section 4), on top of ``tokenizer`` (its
    ViT, GSB, decoder and loss weights). Numbers the paper text does not give are ours."""

    attention: str = "tubelet"  # "full" | "causal" | "tubelet" (own latent frame + the one before)
    temporal_compression: str = "hier"  # "hier" (2x at the patch embedding, 2x after merge_after) | "single" (4x at the input)
    merge_after: int = 6  # hier: Gen-ViT blocks run at 2x temporal compression before the second 2x stage
    rope_theta: float = 10000.0  # 3D RoPE base
    lambda_distill_video: float = 1.0  # video teacher vs decompressed Sem-ViT features (the image term: tokenizer.lambda_distill)
    video_teacher_weights: str = ""  # a local safetensors of the video teacher's ViT ("" = random, tests only)


@dataclass
class LLMConfig:
    """The language model. ``path`` names a local transformers directory (paper presets); when it
    is empty a randomly initialised Qwen2 of the sizes below is built (tiny presets)."""

    path: str = ""
    hidden_size: int = 1536
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    intermediate_size: int = 8960
    vocab_size: int = 151936
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    attn_implementation: str = "sdpa"

    def check(self) -> None:
        """Raise a ConfigError naming a head count that does not divide its width."""
        _heads(self, "llm.", "hidden_size", "num_heads")
        _heads(self, "llm.", "num_heads", "num_kv_heads")  # grouped-query attention


@dataclass
class UMMConfig:
    """HYDRA's own parts on top of the tokenizer and the LLM (DESIGN section 3)."""

    tokenizer_path: str = ""  # a saved HydraTok or HydraXTok directory ("" = build from `tokenizer`)
    xtok: bool = False  # HYDRA-X: HydraXTok (`tokenizer` + `xtok`) in place of HYDRA-TOK, for videos and edits
    edit_layout: str = "sti"  # "sti": Sem-ViT over [z_src; z_tgt] with the tubelet mask | "indep": each alone
    head_width: int = 1024
    head_depth: int = 4
    head_heads: int = 16
    lambda_flow: float = 1.0
    caption_dropout: float = 0.1
    # an edit's source becomes the null latent (0) this often (image guidance), together with its
    # instruction in min(caption_dropout / 2, this) of edits (both unconditional, as InstructPix2Pix trains)
    source_dropout: float = 0.1
    cfg_scale: float = 4.0
    image_cfg_scale: float = 1.5  # editing: the guidance scale of the source image (cfg_scale: of the instruction)
    max_text_len: int = 256
    flow: FlowConfig = field(default_factory=FlowConfig)  # t sampling of the vision head, T2I sampler

    def check(self) -> None:
        """Raise a ConfigError naming the first value HYDRA cannot be built or trained with."""
        _heads(self, "umm.", "head_width", "head_heads")
        _fraction(self, "umm.", "caption_dropout", "source_dropout")
        require(self.max_text_len >= 1, "umm.max_text_len", self.max_text_len, ">= 1")
        self.flow.check("umm.flow.")


@dataclass
class HarmonConfig:
    """Harmon, the shared-MAR-encoder baseline (DESIGN section 5). Defaults follow Harmon's code
    (wusize/Harmon: MAR's KL-16 autoencoder, MAR-B encoder/decoder, the diffusion MLP head)."""

    image_size: int = 256
    # KL autoencoder (MAR's KL-16 at these defaults): stride 2 ** (len(vae_ch_mult) - 1)
    vae_path: str = ""  # a local checkpoint (e.g. MAR's kl16.ckpt); "" = random init (tiny presets train one)
    vae_channels: int = 128
    vae_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    vae_res_blocks: int = 2
    latent_dim: int = 16
    latent_scale: float = 0.2325
    lambda_vae_kl: float = 1e-6  # KL weight when the autoencoder itself trains (ours)
    # MAR encoder / decoder (bidirectional ViTs over latent tokens, patch 1)
    buffer_size: int = 64
    encoder_width: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_width: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # attention and projection dropout of the MAR blocks
    # diffusion MLP head
    head_width: int = 1024
    head_depth: int = 6
    diffusion_steps: int = 1000  # training schedule (cosine)
    sampling_steps: int = 100  # respaced schedule for sampling
    diffusion_repeat: int = 4  # each token's loss at this many different t
    clip_denoised: float = 0.0  # > 0: clamp the head's x0 estimate to [-c, c] while sampling (0 = Harmon's, off)
    # training
    mask_ratio_min: float = 0.7  # mask ratio ~ N(1, 0.25) truncated to [mask_ratio_min, 1]
    mask_ratio_std: float = 0.25
    caption_dropout: float = 0.1
    und_grad_scale: float = 0.1  # the caption loss's gradient into the visual tokens is scaled by this
    # sampling
    mar_steps: int = 64  # K masked-autoregressive steps
    cfg_scale: float = 3.0
    temperature: float = 1.0

    def check(self) -> None:
        """Raise a ConfigError naming the first value Harmon cannot be built or trained with."""
        _heads(self, "harmon.", "encoder_width", "encoder_heads")
        _heads(self, "harmon.", "decoder_width", "decoder_heads")
        _fraction(self, "harmon.", "caption_dropout", "dropout")


@dataclass
class Config:
    """Everything a run needs. Sections grow with the issues; keys stay stable once landed."""

    name: str = "custom"
    seed: int = 0
    data: str = ""  # training data: a manifest, image folder, LLaVA JSON, shard pattern or "shapes"
    stage: str = ""  # "1" | "2" (HYDRA-TOK), "1" | "2" | "3" (HYDRA-XTok), "I" | "II" | "III" (HYDRA), "vae" | "unified" (Harmon)
    init: str = ""  # a saved model directory a stage continues (tokenizer stage 2, HYDRA II-III); see RUN_KEYS
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    xtok: XTokConfig = field(default_factory=XTokConfig)  # HYDRA-X's tokenizer (with `tokenizer`)
    llm: LLMConfig = field(default_factory=LLMConfig)
    umm: UMMConfig = field(default_factory=UMMConfig)
    harmon: HarmonConfig = field(default_factory=HarmonConfig)  # the Harmon baseline (with `llm`)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Raise a ConfigError naming the first value that cannot work, before any run starts."""
        require(self.seed >= 0, "seed", self.seed, ">= 0")
        for section in (self.tokenizer, self.llm, self.umm, self.harmon, self.train):
            section.check()


# The keys of a model's config section that steer only its losses and sampling, read at run time, not
# when the model is built. A run that continues a saved model (``init=...``) builds the model from the
# saved config and then takes these from its own, so a stage's overrides (``tokenizer.lambda_gan=0``,
# ``umm.lambda_flow=5``) hold; the rest (sizes, layout, weight paths) stays the saved model's.
RUN_KEYS: dict[type, tuple[str, ...]] = {
    TokenizerConfig: ("cons_stop_grad", "decode_steps", "lambda_kl", "lambda_cons", "lambda_distill",
                      "lambda_lpips", "lambda_l1", "lambda_gan", "flow", "lpips_weights"),
    XTokConfig: ("lambda_distill_video",),
    UMMConfig: ("lambda_flow", "caption_dropout", "source_dropout", "cfg_scale", "image_cfg_scale", "flow"),
    HarmonConfig: ("mask_ratio_min", "mask_ratio_std", "caption_dropout", "und_grad_scale", "diffusion_repeat",
                   "mar_steps", "sampling_steps", "clip_denoised", "cfg_scale", "temperature"),
}


def adopt_run_keys(saved: Any, run: Any) -> Any:
    """Copy the :data:`RUN_KEYS` of ``run`` into ``saved`` (in place: the model holding ``saved`` sees
    them) and return ``saved``; both are sections of one type."""
    if type(saved) is not type(run):
        raise TypeError(f"adopt_run_keys needs two {type(saved).__name__}, got a {type(run).__name__}")
    for key in RUN_KEYS[type(saved)]:
        setattr(saved, key, copy.deepcopy(getattr(run, key)))
    return saved


# ---------------------------------------------------------------------------- (de)serialisation


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting ints to floats, tuples to lists)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp} ({'; '.join(errors)})")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-6" as a string
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise with the valid ones listed."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(prefix + n for n in names)}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _parse(text: str, where: str, json_text: bool = False) -> Any:
    """``text`` read as YAML (or JSON); a syntax error becomes a one-line ConfigError naming ``where``."""
    try:
        return json.loads(text) if json_text else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{where} is not valid YAML: {problem}{at}") from None


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply ``a.b=value`` strings to a :class:`Config` or :class:`TrainConfig` (in place), check the
    result and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = _parse(raw, f"override {item!r}") if raw != "" else ""
        node, parts = cfg, key.strip().split(".")
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(node)]
            here = ".".join(parts[:depth])
            if part not in names:
                prefix = here + "." if here else ""
                raise ConfigError(
                    f"unknown config key {key!r}; valid keys here: {', '.join(prefix + n for n in names)}"
                )
            tp = typing.get_type_hints(type(node))[part]
            if depth == len(parts) - 1:
                if _is_dataclass_type(tp):
                    raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.<name>=...")
                setattr(node, part, _coerce(value, tp, key))
            else:
                if not _is_dataclass_type(tp):
                    raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section")
                node = getattr(node, part)
    cfg.check()
    return cfg


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_file(path: Path) -> dict:
    """The mapping of config keys in a YAML (or ``.json``) file; ``{}`` when it is empty."""
    data = _parse(path.read_text(), str(path), json_text=path.suffix == ".json")
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path} must hold a mapping of config keys at its top level, got {type(data).__name__}")
    return data or {}


def _read_preset(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A preset's settings over those of its ``base`` (a preset name, or a path relative to its file)."""
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    path = preset if preset.is_file() else Path(name_or_path)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"config file not found: {path}")
        raise ConfigError(f"no config preset {str(name_or_path)!r}; presets: {', '.join(preset_names())}")
    if path.resolve() in seen:
        raise ConfigError(f"config bases form a cycle: {' -> '.join(map(str, (*seen, path.resolve())))}")
    data = _read_file(path)
    base = data.pop("base", None)
    if not base:
        return data
    relative = path.parent / str(base)
    return _deep_merge(_read_preset(relative if relative.is_file() else base, (*seen, path.resolve())), data)


def load_config(name_or_path: str | Path = "tiny", overrides: list[str] | tuple[str, ...] = (), cls: type = Config):
    """A preset name (``tiny``, ``paper``, ...) or a YAML/JSON path, then ``key=value`` overrides;
    a ConfigError names the first key or value that does not fit."""
    path = Path(name_or_path)
    data = _read_file(path) if path.suffix == ".json" else _read_preset(name_or_path)
    return apply_overrides(from_dict(cls, data), overrides)
