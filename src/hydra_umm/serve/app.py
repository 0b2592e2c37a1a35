"""One process, one model, two faces: the gradio page at / and the OpenAI-shaped API at /v1.

The page has one tab per capability of the loaded pipeline (:mod:`hydra_umm.serve.capabilities`)
and a model panel. The tab functions live in :class:`Tasks` as plain Python so that they can be
called (and tested) without a browser; they and the API share one bounded
:class:`~hydra_umm.serve.queue.ModelQueue`, so the model runs one request at a time.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image

from hydra_umm.data.shapes import generate_prompts
from hydra_umm.data.video import write_clip
from hydra_umm.eval.metrics import psnr
from hydra_umm.inference import HarmonPipeline, HydraPipeline, TokenizerPipeline, load_pipeline
from hydra_umm.data.transforms import to_pil, to_tensor
from hydra_umm.serve.api import MAX_IMAGES, MAX_NEW_TOKENS, add_api
from hydra_umm.serve.capabilities import capabilities
from hydra_umm.serve.chat import answer_stream, conversation_prompt, text_deltas
from hydra_umm.serve.queue import ModelQueue, QueueFull

Progress = Callable[..., Any]  # gr.Progress, or any callable taking ((done, total), desc=, unit=)


def _step_reporter(progress: Progress) -> Callable[[int, int], None]:
    """A pipeline ``progress(step, steps)`` callback that advances the page's progress bar (gr.Progress
    finds its page event in the context, so the callback runs in a copy of the caller's)."""
    context = contextvars.copy_context()

    def step_done(step: int, steps: int) -> None:
        context.run(progress, (step, steps), desc="sampling", unit="steps")

    return step_done


class Tasks:
    """The page's task functions. Each model call goes through ``queue``; a full queue is a
    ``gr.Error`` the page shows."""

    def __init__(self, pipe: TokenizerPipeline, queue: ModelQueue):
        self.pipe, self.queue = pipe, queue

    def _run(self, job: Callable[[], Any]) -> Any:
        try:
            return self.queue.submit(job).result()
        except QueueFull as e:
            raise gr.Error(str(e)) from None

    def generate(
        self, prompt: str, steps: int, cfg_scale: float, sampler: str | None, seed: int, n: int,
        progress: Progress = gr.Progress(),
    ) -> list[Image.Image]:
        """Text-to-image, reporting progress after every sampling step (``sampler`` None for Harmon)."""
        if not prompt.strip():
            raise gr.Error("enter a prompt")
        step_done = _step_reporter(progress)
        return self._run(lambda: self.pipe.generate(
            [prompt] * int(n), int(steps), float(cfg_scale), sampler, int(seed), progress=step_done))

    def edit(
        self, image: Image.Image | None, instruction: str, steps: int, cfg_scale: float, image_cfg_scale: float,
        seed: int, strength: float = 1.0, progress: Progress = gr.Progress(),
    ) -> Image.Image:
        """Instruction-based editing (HYDRA-X), reporting progress after every sampling step."""
        if image is None:
            raise gr.Error("upload an image first")
        if not instruction.strip():
            raise gr.Error("type an instruction")
        step_done = _step_reporter(progress)
        (edited,) = self._run(lambda: self.pipe.edit(
            [image], [instruction.strip()], int(steps), float(cfg_scale), float(image_cfg_scale), int(seed),
            progress=step_done, strength=float(strength)))
        return edited

    def video(
        self, prompt: str, frames: int, steps: int, cfg_scale: float, seed: int, progress: Progress = gr.Progress(),
    ) -> str:
        """Text-to-video (HYDRA-X): the path of the clip written as an mp4 for the page to play."""
        if not prompt.strip():
            raise gr.Error("enter a prompt")
        step_done = _step_reporter(progress)
        try:
            (clip,) = self._run(lambda: self.pipe.generate_video(
                [prompt], int(frames), int(steps), float(cfg_scale), seed=int(seed), progress=step_done))
        except ValueError as e:  # a frame count that is not 1 + 4k
            raise gr.Error(str(e)) from None
        with tempfile.NamedTemporaryFile(prefix="hydra-video-", suffix=".mp4", delete=False) as f:
            path = f.name
        return str(write_clip(clip, path))

    def understand(
        self, image: Image.Image | None, message: str, turns: list[dict], max_new_tokens: int, temperature: float,
        seed: int,
    ) -> Iterator[tuple[list[dict], str, list[dict]]]:
        """One chat turn about ``image``: yields (the conversation with the answer so far, "" for the
        question box, the same conversation for the page's state) per token; ``turns`` is the
        conversation before it as ``{"role", "content"}`` dicts."""
        if image is None:
            raise gr.Error("upload an image first")
        if not message.strip():
            raise gr.Error("type a question")
        model = self.pipe.model
        history = [*turns, {"role": "user", "content": message.strip()}]
        prompt = conversation_prompt([t["content"] for t in history], model.text_tokenizer, model.cfg.umm.max_text_len)
        try:
            tokens = answer_stream(self.queue, self.pipe, image, prompt, int(max_new_tokens), float(temperature),
                                   int(seed))
        except QueueFull as e:
            raise gr.Error(str(e)) from None
        reply = ""
        for delta in ["", *text_deltas(tokens, model.text_tokenizer)]:
            reply += delta
            conversation = [*history, {"role": "assistant", "content": reply}]
            yield conversation, "", conversation

    def reconstruct(self, image: Image.Image | None, steps: int, seed: int) -> tuple[Image.Image, Image.Image, str]:
        """(the input at the model's resolution, its HYDRA-TOK reconstruction, their PSNR)."""
        if image is None:
            raise gr.Error("upload an image first")
        x = self.pipe.pixels([image])  # (1, 3, S, S) in [-1, 1] at the model's size
        (recon,) = self._run(lambda: self.pipe.reconstruct(x, steps=int(steps), seed=int(seed)))
        db = psnr(x, to_tensor(recon)[None].to(x.device))[0].item()
        return to_pil(x)[0], recon, f"PSNR {db:.2f} dB"


def model_card(pipe: TokenizerPipeline, model_name: str) -> str:
    """Markdown: the config summary, parameters per component, device and dtype."""
    network = pipe.model if isinstance(pipe, HydraPipeline) else pipe.tokenizer
    rows = [("tasks", ", ".join(capabilities(pipe)))]
    if isinstance(pipe, HarmonPipeline):
        h = pipe.model.cfg.harmon
        rows += [
            ("image", f"{h.image_size} px, KL autoencoder, {pipe.model.num_tokens} latent tokens of {h.latent_dim} "
                      "channels"),
            ("MAR", f"encoder width {h.encoder_width}, depth {h.encoder_depth}; decoder width {h.decoder_width}, "
                    f"depth {h.decoder_depth}; {h.buffer_size} buffer tokens"),
        ]
    else:
        tok = pipe.tokenizer
        rows += [
            ("image", f"{tok.cfg.image_size} px, patch {tok.cfg.patch_size}, {tok.grid[0] * tok.grid[1]} latent "
                      f"tokens of {tok.cfg.latent_dim} channels"),
            ("HYDRA-TOK", f"width {tok.cfg.width}, depth {tok.cfg.depth} (Gen-ViT {tok.cfg.gen_depth}), "
                          f"{tok.cfg.decoder} decoder"),
        ]
    if isinstance(pipe, HydraPipeline):
        llm, options = pipe.model.llm.config, pipe.generation_options
        sampler = f"{options.sampler} " if options.sampler else "masked-autoregressive "
        rows += [
            ("LLM", f"hidden {llm.hidden_size}, {llm.num_hidden_layers} layers, "
                    f"vocabulary {len(pipe.model.text_tokenizer)}"),
            ("generation", f"{options.steps} {sampler}steps, CFG {options.cfg_scale}"),
        ]
    rows.append(("device, dtype", f"{pipe.device}, {next(network.parameters()).dtype}"))
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in network.named_children()}
    summary = "\n".join(f"| {k} | {v} |" for k, v in rows)
    components = "\n".join(f"| {name} | {n:,} |" for name, n in counts.items())
    return f"""### {model_name}

| | |
|---|---|
{summary}

| component | parameters |
|---|---|
{components}
| **total** | **{sum(counts.values()):,}** |
"""


# ------------------------------------------------------------------------------------------ page


def _generate_tab(tasks: Tasks) -> None:
    options = tasks.pipe.generation_options
    examples = [p["prompt"] for p in generate_prompts(np.random.default_rng(0), per_tag=1)]
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder="a photo of a red circle", elem_id="prompt")
            steps = gr.Slider(1, 100, value=options.steps, step=1, label="Steps")
            cfg_scale = gr.Slider(1.0, 10.0, value=options.cfg_scale, step=0.5, label="CFG scale")
            sampler = gr.Radio(list(options.samplers), value=options.sampler, label="Sampler",
                               visible=bool(options.samplers))
            seed = gr.Number(0, precision=0, label="Seed")
            n = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id="gallery")
    gr.Examples(examples, inputs=prompt, label="Prompts from the shapes world")
    button.click(tasks.generate, [prompt, steps, cfg_scale, sampler, seed, n], gallery)


def _understand_tab(tasks: Tasks) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image")
            max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=32, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.1, label="Temperature (0 = greedy)")
            seed = gr.Number(0, precision=0, label="Seed")
        with gr.Column():
            chat = gr.Chatbot(label="Conversation")
            turns = gr.State([])
            message = gr.Textbox(label="Question", placeholder="what colour is the square?")
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                clear = gr.Button("Clear")
    inputs = [image, message, turns, max_new_tokens, temperature, seed]
    for event in (send.click, message.submit):
        event(tasks.understand, inputs, [chat, message, turns])
    clear.click(lambda: ([], []), None, [chat, turns])


def _reconstruct_tab(tasks: Tasks) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image")
            # the flow decoder's ODE steps; the ViT decoder and Harmon's autoencoder decode in one pass
            flow_decoder = hasattr(tasks.pipe, "tokenizer") and tasks.pipe.tokenizer.cfg.decoder == "flow"
            steps = gr.Slider(1, 100, value=tasks.pipe.tokenizer.cfg.decode_steps if flow_decoder else 1, step=1,
                              label="Decoder steps", visible=flow_decoder)
            seed = gr.Number(0, precision=0, label="Seed")
            button = gr.Button("Reconstruct", variant="primary")
        original = gr.Image(label="Original (model resolution)", height=256)
        recon = gr.Image(label="Reconstruction", height=256)
    score = gr.Markdown()
    button.click(tasks.reconstruct, [image, steps, seed], [original, recon, score])


def _edit_tab(tasks: Tasks) -> None:
    options, umm = tasks.pipe.generation_options, tasks.pipe.model.cfg.umm
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Source image")
            instruction = gr.Textbox(label="Instruction", placeholder="make the red circle blue")
            steps = gr.Slider(1, 100, value=options.steps, step=1, label="Steps")
            cfg_scale = gr.Slider(1.0, 10.0, value=umm.cfg_scale, step=0.5, label="Instruction guidance")
            image_cfg_scale = gr.Slider(1.0, 5.0, value=umm.image_cfg_scale, step=0.1, label="Image guidance")
            seed = gr.Number(0, precision=0, label="Seed")
            strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05,
                                 label="Strength (1: from noise; lower: from the noised source)")
            button = gr.Button("Edit", variant="primary")
        edited = gr.Image(label="Edited", height=256)
    button.click(tasks.edit, [image, instruction, steps, cfg_scale, image_cfg_scale, seed, strength], edited)


def _video_tab(tasks: Tasks) -> None:
    options = tasks.pipe.generation_options
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder="a red circle moves to the left")
            frames = gr.Slider(1, 33, value=17, step=4, label="Frames (1 + 4k)")
            steps = gr.Slider(1, 100, value=options.steps, step=1, label="Steps")
            cfg_scale = gr.Slider(1.0, 10.0, value=options.cfg_scale, step=0.5, label="CFG scale")
            seed = gr.Number(0, precision=0, label="Seed")
            button = gr.Button("Generate video", variant="primary")
        video = gr.Video(label="Clip", height=256)
    button.click(tasks.video, [prompt, frames, steps, cfg_scale, seed], video)


TABS = {"generate": ("Generate", _generate_tab), "understand": ("Understand", _understand_tab),
        "reconstruct": ("Reconstruct", _reconstruct_tab), "edit": ("Edit", _edit_tab), "video": ("Video", _video_tab)}


def build_page(pipe: TokenizerPipeline, queue: ModelQueue, model_name: str) -> gr.Blocks:
    """The gradio page: a tab per capability of ``pipe``, then the model panel."""
    tasks = Tasks(pipe, queue)
    with gr.Blocks(title=f"HYDRA: {model_name}", analytics_enabled=False) as page:
        gr.Markdown(f"## HYDRA: `{model_name}`")
        with gr.Tabs():
            for task in capabilities(pipe):
                label, build = TABS[task]
                with gr.Tab(label, id=task):
                    build(tasks)
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_card(pipe, model_name))
    return page


# ------------------------------------------------------------------------------------ the server


def create_app(
    pipe: TokenizerPipeline, model_name: str = "hydra", queue_depth: int = 4, max_image_bytes: int = 4 << 20
) -> FastAPI:
    """The FastAPI app: /v1 (the API) and / (the page), one model queue of ``queue_depth``."""
    queue = ModelQueue(queue_depth)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="hydra-umm", lifespan=lifespan)
    app.state.queue = queue
    add_api(app, pipe, queue, model_name, max_image_bytes)
    page = build_page(pipe, queue, model_name)
    return gr.mount_gradio_app(app, page, path="/", max_file_size=max_image_bytes, ssr_mode=False)


def serve(
    model_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, queue_depth: int = 4,
    max_image_bytes: int = 4 << 20, device: str = "cpu",
) -> None:
    """Load the model in ``model_dir`` (HYDRA, or HYDRA-TOK alone) and serve it until interrupted
    (never shared publicly)."""
    pipe = load_pipeline(model_dir, device=device)
    name = Path(os.path.abspath(model_dir)).name  # the directory's own name, not a link's target
    app = create_app(pipe, name, queue_depth, max_image_bytes)
    print(f"serving {name}: page http://{host}:{port}/  API http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port)
