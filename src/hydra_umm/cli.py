"""`hydra-umm`: the only place that parses command-line arguments.

Each sub-command parses its flags here and calls one function of the library; config overrides
are passed through as ``key=value`` words.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


# ------------------------------------------------------------------------------------ shapes


def _shapes_make(args: argparse.Namespace) -> None:
    from hydra_umm.data.shapes import make_clip_dataset, make_dataset

    if args.video:
        summary = make_clip_dataset(args.out, n=args.n, frames=args.frames, size=args.size, seed=args.seed,
                                    video_format=args.format)
    else:
        summary = make_dataset(args.out, n=args.n, size=args.size, seed=args.seed, prompts_per_tag=args.prompts_per_tag)
    print(json.dumps(summary, indent=2))


def _shapes_score(args: argparse.Namespace) -> None:
    from hydra_umm.data.shapes import format_scores, score_generations

    result = score_generations(args.images, args.metadata)
    out = Path(args.out) if args.out else Path(args.images) / "scores.json"
    out.write_text(json.dumps(result, indent=2))
    print(format_scores(result))
    print(f"scores written to {out}")


# ------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> None:
    from hydra_umm.config import load_config
    from hydra_umm.train.distributed import destroy_distributed
    from hydra_umm.train.recipes import RECIPES

    cfg = load_config(args.config or ("xtok-tiny" if args.what == "xtok" else "tiny"), args.overrides)
    try:
        model_dir = RECIPES[args.what](cfg)
    finally:  # under torchrun: leave the process group the recipe joined
        destroy_distributed()
    print(f"model saved to {model_dir}")


def _ablate_xtok(args: argparse.Namespace) -> None:
    from hydra_umm.train.ablate import ablate_xtok

    page = ablate_xtok(args.out, args.steps, preset=args.config, overrides=args.overrides, n_clips=args.clips,
                       frames=args.frames, n_images=args.images)
    print(f"ablation report written to {page}")


def _ablate_edit(args: argparse.Namespace) -> None:
    from hydra_umm.train.ablate import ablate_edit

    page = ablate_edit(args.out, args.steps, args.tok_steps, preset=args.config, overrides=args.overrides,
                       n_edits=args.edits, n_eval=args.eval, frames=args.frames, n_clips=args.clips,
                       n_images=args.images)
    print(f"ablation report written to {page}")


# ---------------------------------------------------------------------------------- inference


def _load_pipeline(args: argparse.Namespace):
    """A HydraModel or a HarmonModel directory (generate / answer / serve)."""
    from hydra_umm.inference import HydraPipeline, load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    if not isinstance(pipe, HydraPipeline):  # HarmonPipeline is one too
        raise SystemExit(f"{args.model} holds a tokenizer only; generate/answer need a HydraModel or HarmonModel")
    return pipe


def _load_any_pipeline(args: argparse.Namespace):
    """A HydraModel or a HYDRA-TOK directory (reconstruction needs only the tokenizer)."""
    from hydra_umm.inference import load_pipeline

    return load_pipeline(args.model, device=args.device)


def _numbered(out: Path, i: int, n: int) -> Path:
    """``out`` for a single result, ``<stem>_<i><suffix>`` beside it for one of several."""
    return out if n == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")


def _save_images(images: list, out: str) -> None:
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = _numbered(out_path, i, len(images))
        image.save(path)
        print(f"wrote {path}")


def _generate(args: argparse.Namespace) -> None:
    from hydra_umm.data.video import write_clip

    pipe = _load_pipeline(args)
    options = dict(steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, seed=args.seed)
    if not args.video:
        return _save_images(pipe.generate([args.prompt] * args.n, **options), args.out)
    clips = pipe.generate_video([args.prompt] * args.n, frames=args.frames, **options)
    for i, frames in enumerate(clips):
        print(f"wrote {write_clip(frames, _numbered(Path(args.out), i, len(clips)))}")


def _edit(args: argparse.Namespace) -> None:
    from hydra_umm.data.datasets import load_image

    pipe = _load_pipeline(args)
    image = load_image(args.image)
    edited = pipe.edit([image] * args.n, [args.instruction] * args.n, steps=args.steps, cfg_scale=args.cfg_scale,
                       image_cfg_scale=args.image_cfg_scale, seed=args.seed, sampler=args.sampler,
                       strength=args.strength)
    _save_images(edited, args.out)


def _answer(args: argparse.Namespace) -> None:
    from hydra_umm.data.datasets import load_image
    from hydra_umm.data.video import check_frame_count, read_frames, sample_frames

    if (args.image is None) == (args.video is None):
        raise SystemExit("answer takes --image or --video (one of them)")
    if args.video is None:
        visual = {"images": [load_image(args.image)]}
    else:
        frames = read_frames(args.video)
        if args.frames is not None:
            check_frame_count(args.frames)
            if len(frames) < args.frames:
                raise ValueError(f"{args.video} has {len(frames)} frames, fewer than --frames {args.frames}")
            frames = sample_frames(frames, args.frames)
        else:
            try:
                check_frame_count(len(frames))
            except ValueError as e:
                raise ValueError(f"{args.video} has {len(frames)} frames: {e}; pass --frames 17 (or 5, 9, ...) "
                                 "to sample that many evenly") from None
        visual = {"videos": [frames]}
    pipe = _load_pipeline(args)
    (text,) = pipe.answer(questions=[args.question], max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, seed=args.seed, **visual)
    print(text)


def _reconstruct(args: argparse.Namespace) -> None:
    from hydra_umm.data.datasets import load_image

    pipe = _load_any_pipeline(args)
    (image,) = pipe.reconstruct([load_image(args.image)], steps=args.steps, seed=args.seed)
    image.save(args.out)
    print(f"wrote {args.out}")


# -------------------------------------------------------------------------------------- eval


def _write_json(result: dict, out: str | None) -> None:
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"written to {out}")


def _eval_recon(args: argparse.Namespace) -> None:
    if args.frames is not None:
        return _eval_recon_clips(args)
    from hydra_umm.eval import evaluate_reconstruction
    from hydra_umm.eval.frechet import INCEPTION_FILE

    pipe = _load_any_pipeline(args)
    result = evaluate_reconstruction(pipe, args.images, inception_weights=args.inception_weights,
                                     size=pipe.image_size, steps=args.steps, seed=args.seed,
                                     limit=args.limit)
    if args.inception_weights is None:
        print(f"rFID skipped: pass --inception-weights <{INCEPTION_FILE}> (a local file; nothing is downloaded)")
    _write_json(result, args.out)


def _eval_recon_clips(args: argparse.Namespace) -> None:
    from hydra_umm.eval.fvd import I3D_FILE
    from hydra_umm.eval.reconstruction import evaluate_clip_reconstruction
    from hydra_umm.models.hydra_xtok import HydraXTok

    tokenizer = HydraXTok.from_pretrained(args.model).to(args.device).eval()
    result = evaluate_clip_reconstruction(tokenizer, args.images, frames=args.frames, i3d_weights=args.i3d_weights,
                                          size=tokenizer.cfg.image_size, steps=args.steps, seed=args.seed,
                                          limit=args.limit)
    if args.i3d_weights is None:
        print(f"rFVD skipped: pass --i3d-weights <{I3D_FILE}> (a local file; nothing is downloaded)")
    _write_json(result, args.out)


def _eval_cknna(args: argparse.Namespace) -> None:
    from hydra_umm.data.datasets import SkipCounter
    from hydra_umm.eval import cknna_pairs, load_images, plot_feature_maps
    from hydra_umm.eval.alignment import alignment_features

    pipe = _load_any_pipeline(args)
    skips = SkipCounter()
    images = load_images(args.images, pipe.image_size, args.limit, skips)
    if len(images) <= args.k:
        raise ValueError(f"CKNNA with --k {args.k} needs more than {args.k} images, got {len(images)}")
    features, pairs = alignment_features(pipe, images, t=args.t, seed=args.seed)
    _write_json(cknna_pairs(features, pairs, args.k), args.out)
    if args.plot:
        from hydra_umm.data.manifest import read_manifest

        if not str(args.images).endswith(".jsonl") or skips.count:
            raise ValueError("--plot colours points by their records' classes: give --images a shapes-world manifest "
                             f"(.jsonl) whose images all read ({skips.count} did not)")
        labels = [r["scene"]["objects"][0]["shape"] for r in read_manifest(args.images)[: len(images)]]
        shown = {k: features[k] for k in ("generation", "understanding") if k in features}
        shown = shown or {k: v for k, v in features.items() if k.endswith(f"/{pipe.tokenizer.cfg.depth - 1}")}
        print(f"plot written to {plot_feature_maps(shown, labels, args.plot)}")


def _eval_report(args: argparse.Namespace) -> None:
    from hydra_umm.data.manifest import read_manifest
    from hydra_umm.eval import load_images, report_run
    from hydra_umm.eval.benchmarks.geneval import read_geneval_metadata
    from hydra_umm.eval.benchmarks.shapes_geneval import score_shapes_image

    pipe = _load_pipeline(args) if args.model else None
    if pipe is None and (args.images or args.metadata or args.manifest):
        raise SystemExit("--images, --metadata and --manifest need --model (the model that reconstructs, "
                         "generates and answers)")
    size = pipe.image_size if pipe else None
    page = report_run(
        args.run,
        pipeline=pipe,
        images=load_images(args.images, size, args.limit) if args.images and pipe else (),
        prompts=read_geneval_metadata(args.metadata)[: args.limit] if args.metadata else (),
        qa_records=read_manifest(args.manifest)[: args.limit] if args.manifest else (),
        scorer=score_shapes_image,
    )
    print(f"report written to {page}")


# ------------------------------------------------------------------------------- bench, demo

DEMO_MODEL = Path("runs/demo/model")  # where `make demo` saves the HYDRA model that `serve` defaults to


def _bench(args: argparse.Namespace) -> None:
    from hydra_umm import bench

    if args.gpu:
        from hydra_umm.bench.gpu import CudaUnavailable, require_cuda

        try:
            require_cuda()
        except CudaUnavailable as e:
            sys.exit(f"hydra-umm: error: {e}")
    bench.run_benchmarks(
        out=args.out,
        include_paper=not args.no_paper,
        suites=bench.GPU_SUITES if args.gpu else bench.SUITES,
        previous=args.compare,
        peak_tflops=args.peak_tflops,
        device="cuda" if args.gpu else "cpu",
    )


def _demo(args: argparse.Namespace) -> None:
    plan = "fast" if args.fast else "full"
    if args.video or args.edit:
        if args.ablation:
            raise SystemExit("--ablation is the default demo's joint-vs-separate ablation; leave out --video/--edit")
        from hydra_umm.demo_x import run_demo_x

        run_demo_x(out=args.out, plan=plan, video=args.video, edit=args.edit)
        return
    from hydra_umm.demo import run_demo

    run_demo(out=args.out, plan=plan, ablation=args.ablation)


def _compare(args: argparse.Namespace) -> None:
    from hydra_umm.compare import run_compare

    run_compare(args.models, out=args.out, plan="fast" if args.fast else "full")


def _serve(args: argparse.Namespace) -> None:
    model = Path(args.model) if args.model else DEMO_MODEL
    if not (model / "model.safetensors").is_file():
        hint = "pass --model DIR" if args.model else "train one with `make demo`, or pass --model DIR"
        raise FileNotFoundError(f"no saved model in {model}: {hint}")
    from hydra_umm.serve import serve

    serve(model, args.host, args.port, args.queue_depth, args.max_image_bytes, args.device)


# ------------------------------------------------------------------------------------ parser


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (argparse names the flag when it is not)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {f'in [{low}, {high}]' if high else f'>= {low}'}, "
                                             f"got {value}")
        return value

    parse.__name__ = "integer"  # argparse: "invalid integer value: 'abc'"
    return parse


COUNT, SEED, PORT = _integer(1), _integer(0, 2**63 - 1), _integer(0, 65535)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydra-umm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    shapes = sub.add_parser("shapes", help="the procedural shapes world").add_subparsers(dest="action", required=True)
    p = shapes.add_parser("make", help="render a shapes-world data set with its JSONL manifests")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=COUNT, default=1000, help="number of scenes")
    p.add_argument("--size", type=COUNT, default=64, help="image side in pixels")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--prompts-per-tag", type=COUNT, default=50, help="GenEval-style prompts drawn per category")
    p.add_argument("--video", action="store_true", help="clips in motion instead of still images (--n clips)")
    p.add_argument("--frames", type=COUNT, default=17, help="frames per clip, 1 + 4k (with --video)")
    p.add_argument("--format", choices=["png", "mp4"], default="png",
                   help="a clip as a folder of PNG frames or an H.264 mp4 (with --video)")
    p.set_defaults(func=_shapes_make)
    p = shapes.add_parser("score", help="score generated images against GenEval-style metadata")
    p.add_argument("--images", required=True, help="folder in GenEval's layout (<index>/samples/*.png)")
    p.add_argument("--metadata", required=True, help="evaluation_metadata.jsonl")
    p.add_argument("--out", default=None, help="JSON file for the scores (default: <images>/scores.json)")
    p.set_defaults(func=_shapes_score)

    p = sub.add_parser("train", help="train the tokenizer or HYDRA: a config preset plus key=value overrides",
                       epilog="overrides: key=value words after the flags, e.g. data=shapes stage=1 train.steps=100")
    p.add_argument("what", choices=["tokenizer", "umm", "harmon", "xtok"])
    p.add_argument("--config", help="a preset name (tiny, paper, ...) or a YAML file (default: tiny; xtok-tiny "
                   "for xtok)")
    p.set_defaults(func=_train, takes_overrides=True)

    ablate = sub.add_parser("ablate", help="ablation studies: train variants with one budget, write a report")
    ablates = ablate.add_subparsers(dest="what", required=True)
    p = ablates.add_parser(
        "xtok", help="HYDRA-X Table 1 on shapes clips: full+single, causal+hier, tubelet+hier and tubelet+single "
        "(attention + temporal compression)",
        epilog="overrides: key=value words after the flags, applied to every variant, e.g. train.batch_size=4")
    p.add_argument("--steps", type=COUNT, default=300, help="training steps of each variant")
    p.add_argument("--out", default="runs/ablate-xtok")
    p.add_argument("--config", default="xtok-tiny", help="a preset name or a YAML file")
    p.add_argument("--clips", type=COUNT, default=200, help="shapes clips rendered (all splits)")
    p.add_argument("--frames", type=COUNT, default=9, help="frames per training and evaluation clip, 1 + 4k")
    p.add_argument("--images", type=COUNT, default=500, help="still shapes scenes (all splits)")
    p.set_defaults(func=_ablate_xtok, takes_overrides=True)
    p = ablates.add_parser(
        "edit", help="HYDRA-X Table 3: editing with STI vs Indep at one budget on shapes edits",
        epilog="overrides: key=value words after the flags, applied to both variants, e.g. train.batch_size=8")
    p.add_argument("--steps", type=COUNT, default=600, help="HYDRA-X training steps of each variant")
    p.add_argument("--tok-steps", type=COUNT, default=600, help="training steps of the shared HYDRA-XTok")
    p.add_argument("--out", default="runs/ablate-edit")
    p.add_argument("--config", default="hydra-x-tiny", help="a preset name or a YAML file")
    p.add_argument("--edits", type=COUNT, default=2000, help="training edits")
    p.add_argument("--eval", type=COUNT, default=70, help="held-out edits scored per variant")
    p.add_argument("--clips", type=COUNT, default=100, help="shapes clips the tokenizer trains on (all splits)")
    p.add_argument("--frames", type=COUNT, default=9, help="frames per tokenizer training clip, 1 + 4k")
    p.add_argument("--images", type=COUNT, default=500, help="still shapes scenes the tokenizer trains on")
    p.set_defaults(func=_ablate_edit, takes_overrides=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="a directory written by save_pretrained")
        p.add_argument("--device", default="cpu")
        p.add_argument("--seed", type=SEED, default=0)

    p = sub.add_parser("generate", help="text-to-image, or text-to-video with --video (HYDRA-X)")
    model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="an image file; with --video an .mp4 (or a folder of PNG frames)")
    p.add_argument("--n", type=COUNT, default=1)
    p.add_argument("--video", action="store_true", help="generate a clip (a HYDRA-X model)")
    p.add_argument("--frames", type=COUNT, default=17, help="frames of a clip: 1 + 4k")
    p.add_argument("--steps", type=COUNT, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--sampler", choices=["euler", "heun"], default=None)
    p.set_defaults(func=_generate)

    p = sub.add_parser("edit", help="edit an image as an instruction says (a HYDRA-X model)")
    model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=COUNT, default=1)
    p.add_argument("--steps", type=COUNT, default=None)
    p.add_argument("--cfg-scale", type=float, default=None, help="instruction guidance (default umm.cfg_scale)")
    p.add_argument("--image-cfg-scale", type=float, default=None, help="source guidance (default umm.image_cfg_scale)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="1: the target from noise; below 1: from the source noised to t = 1 - strength")
    p.add_argument("--sampler", choices=["euler", "heun"], default=None)
    p.set_defaults(func=_edit)

    p = sub.add_parser("answer", help="answer a question about an image, or a clip with --video (HYDRA-X)")
    model_args(p)
    p.add_argument("--image", default=None)
    p.add_argument("--video", default=None, help="a video file or a folder of frames")
    p.add_argument("--frames", type=COUNT, default=None,
                   help="with --video: sample this many frames (1 + 4k) evenly; default: every frame, 1 + 4k of them")
    p.add_argument("--question", required=True)
    p.add_argument("--max-new-tokens", type=COUNT, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.set_defaults(func=_answer)

    p = sub.add_parser("reconstruct", help="encode and decode an image through HYDRA-TOK")
    model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=COUNT, default=None)
    p.set_defaults(func=_reconstruct)

    evaluate = sub.add_parser("eval", help="evaluation: metrics, alignment and the HTML report").add_subparsers(
        dest="action", required=True)
    p = evaluate.add_parser("recon", help="reconstruction PSNR, SSIM and (with Inception weights) rFID")
    model_args(p)
    p.add_argument("--images", required=True, help="an image folder or a JSONL manifest (with --frames: of clips)")
    p.add_argument("--inception-weights", default=None, help="local pt_inception-2015-12-05 weights for rFID")
    p.add_argument("--frames", type=COUNT, default=None,
                   help="clips of this many frames (1 + 4k) through a HYDRA-XTok model: per-frame PSNR/SSIM, rFVD")
    p.add_argument("--i3d-weights", default=None, help="local i3d_torchscript.pt for rFVD (with --frames)")
    p.add_argument("--limit", type=COUNT, default=None, help="use the first N images")
    p.add_argument("--steps", type=COUNT, default=None, help="decoder ODE steps")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.set_defaults(func=_eval_recon)
    p = evaluate.add_parser("cknna", help="CKNNA: tokenizer layers vs teacher, generation vs understanding")
    model_args(p)
    p.add_argument("--images", required=True, help="an image folder or a JSONL manifest")
    p.add_argument("--k", type=COUNT, default=10, help="nearest neighbours")
    p.add_argument("--t", type=float, default=0.5, help="flow time of the generation branch's noised latent")
    p.add_argument("--limit", type=COUNT, default=256)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.add_argument("--plot", default=None, help="a PNG of t-SNE maps coloured by class (needs a shapes manifest)")
    p.set_defaults(func=_eval_cknna)
    p = evaluate.add_parser("report", help="one HTML page of a run: curves, metrics, samples, answers")
    p.add_argument("--run", required=True, help="the run folder (TensorBoard logs, eval/*.json)")
    p.add_argument("--model", default=None, help="a saved HydraModel to draw samples and answers from")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", default=None, help="images to reconstruct (folder or manifest)")
    p.add_argument("--metadata", default=None, help="GenEval-style prompt metadata to generate from")
    p.add_argument("--manifest", default=None, help="a manifest whose questions are answered")
    p.add_argument("--limit", type=COUNT, default=8)
    p.set_defaults(func=_eval_report)

    p = sub.add_parser("bench", help="speed benchmarks, as ratios against references measured in the same run")
    p.add_argument("--out", default="bench.json")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-scale presets (--gpu: the tiny preset)")
    p.add_argument("--compare", default=None, metavar="PREVIOUS_JSON", help="print each figure's change against "
                   "an earlier run's JSON")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for the MFU (default: the "
                   "known peak of the CUDA device; none on a CPU)")
    p.add_argument("--gpu", action="store_true", help="the paper preset on one CUDA GPU: training steps "
                   "(FSDP2, bf16, activation checkpointing and compile on/off), text-to-image, understanding")
    p.set_defaults(func=_bench)

    p = sub.add_parser("serve", help="the web page (/) and the OpenAI-shaped API (/v1) for one model")
    p.add_argument("--model", default=None, help=f"a saved model directory (default: the demo's, {DEMO_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind; only this machine by default")
    p.add_argument("--port", type=PORT, default=7860)
    p.add_argument("--queue-depth", type=COUNT, default=4, help="requests that may wait for the model; more get 503")
    p.add_argument("--max-image-bytes", type=COUNT, default=4 << 20, help="the largest image a request may send")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="the main job on the embedded shapes world")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--fast", action="store_true", help="a smaller, quicker version")
    p.add_argument("--ablation", action="store_true",
                   help="also train HYDRA on generation only and on understanding only with the same budget")
    p.add_argument("--video", action="store_true",
                   help="the HYDRA-X demo instead (in <out>/x): a model that also answers about and generates clips")
    p.add_argument("--edit", action="store_true",
                   help="the HYDRA-X demo instead (in <out>/x): a model that also edits images (with --video: both)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("compare", help="train HYDRA and Harmon on one budget and report them side by side")
    p.add_argument("--models", default="hydra,harmon", help="comma-separated, of: hydra, harmon")
    p.add_argument("--out", default="runs/demo", help="the demo's folder (its HYDRA runs are reused)")
    p.add_argument("--fast", action="store_true", help="the demo's smaller, quicker plan")
    p.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    from hydra_umm.config import ConfigError

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        args.overrides = extra  # key=value config overrides
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from hydra_umm.data.datasets import UnreadableImage
    from hydra_umm.train.errors import TrainingError

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, UnreadableImage,
            TrainingError) as e:
        print(f"hydra-umm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
