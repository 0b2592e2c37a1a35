"""The API at /v1, shaped like OpenAI's so that existing clients and harnesses work unchanged.

- ``POST /v1/chat/completions``: messages of text and ``image_url`` parts (data URLs; exactly one
  image per conversation), answered whole or streamed as ``chat.completion.chunk`` server-sent
  events ending in ``data: [DONE]``.
- ``POST /v1/images/generations``: prompt, n, size (the model's own), seed, ``b64_json`` PNGs;
  ``steps``, ``cfg_scale`` and ``sampler`` are accepted as extensions (``extra_body``).
- ``GET /v1/models``: the one served model.

Defaults where OpenAI's make no sense for this model: 32 new tokens when the request names no
limit, seed 0 (so a repeated request repeats its answer); temperature defaults to OpenAI's 1.0.
A route exists only when the model can do its task (:mod:`hydra_umm.serve.capabilities`). Errors
come back in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: malformed JSON,
an invalid field or an unsupported option 400 (naming it), an unknown model or route 404, an image
over the size limit 413, a full model queue 503. Every model call goes through the server's one
:class:`~hydra_umm.serve.queue.ModelQueue`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
import uuid
from typing import Annotated, Any, AsyncIterator, Callable, Iterator, Literal, Optional, Union

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from hydra_umm.data.transforms import to_rgb
from hydra_umm.inference import TokenizerPipeline
from hydra_umm.serve.capabilities import capabilities
from hydra_umm.serve.chat import answer_stream, conversation_prompt, text_deltas
from hydra_umm.serve.queue import ModelQueue, QueueFull

MAX_NEW_TOKENS = 512  # the most tokens one chat completion may ask for
MAX_IMAGES = 8  # the most images one generation request may ask for
MAX_PIXELS = 4096 * 4096  # the largest image a request may send (it is resized to the model's size anyway)
MAX_SEED = 2**63 - 2  # torch generators take seeds below 2**64; images draw with seed and seed + 1


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------ requests


class OpenAIRequest(BaseModel):
    """A request body: fields not declared are unsupported options (400 naming them)."""

    model_config = ConfigDict(extra="allow")

    def reject_unsupported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if value is not None:
                raise APIError(400, f"unsupported option {name!r}", param=name, code="unsupported_option")


class ImageURL(BaseModel):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]], None] = None


class ChatRequest(OpenAIRequest):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 is greedy
    seed: int = Field(0, ge=0, le=MAX_SEED)
    n: Literal[1] = 1


class ImageRequest(OpenAIRequest):
    prompt: str
    model: Optional[str] = None
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: Optional[str] = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    response_format: Literal["b64_json"] = "b64_json"
    steps: Optional[int] = Field(None, ge=1, le=1000)
    cfg_scale: Optional[float] = Field(None, ge=0.0)
    sampler: Optional[Literal["euler", "heun"]] = None


# ---------------------------------------------------------------------------------------- images


def decode_data_url(url: str, max_bytes: int) -> Image.Image:
    """``data:image/...;base64,...`` -> an RGB PIL image; APIError 400 / 413 naming the problem."""
    header, comma, payload = url.partition(",")
    if not (url.startswith("data:") and comma and header.endswith(";base64")):
        raise APIError(400, "image_url must be a base64 data URL (data:image/png;base64,...); "
                       "this server fetches nothing", param="image_url")
    size = len(payload) * 3 // 4
    if size > max_bytes:
        raise APIError(413, f"the image is about {size} bytes, over this server's limit of {max_bytes} bytes "
                       "(--max-image-bytes)", param="image_url", code="image_too_large")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        if image.width * image.height > MAX_PIXELS:  # checked from the header, before decoding the pixels
            raise APIError(413, f"the image is {image.width}x{image.height}, over this server's limit of "
                           f"{MAX_PIXELS} pixels", param="image_url", code="image_too_large")
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise APIError(400, f"the image does not decode: {e}", param="image_url", code="invalid_image") from None
    return to_rgb(image)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def split_messages(messages: list[Message], max_bytes: int) -> tuple[Image.Image, list[str]]:
    """Messages -> (the conversation's one image, the texts of its turns in order)."""
    images, turns, text = [], [], ""
    for message in messages:
        parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        images += [p.image_url.url for p in parts or [] if isinstance(p, ImagePart)]
        text = " ".join(p.text.strip() for p in parts or [] if isinstance(p, TextPart) and p.text.strip())
        if text:
            turns.append(text)
    if len(images) != 1:
        raise APIError(400, f"this model talks about exactly one image per conversation (an image_url part), "
                       f"got {len(images)}", param="messages")
    if messages[-1].role != "user" or not text:
        raise APIError(400, "the last message must be a user message with a non-empty question", param="messages")
    return decode_data_url(images[0], max_bytes), turns


# ---------------------------------------------------------------------------------------- routes


def add_api(app: FastAPI, pipe: TokenizerPipeline, queue: ModelQueue, model_name: str, max_image_bytes: int) -> None:
    """Mount the /v1 routes and the OpenAI-shaped error handlers on ``app``."""
    router = APIRouter(prefix="/v1")
    tasks = capabilities(pipe)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        first = max(e.errors(), key=lambda error: len(error["loc"]))  # the deepest: in a union, the branch meant
        if first["type"] == "json_invalid":
            return error_response(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
        field = ".".join(str(x) for x in first["loc"] if x != "body" and "[" not in str(x))  # not union branches
        if not field:
            return error_response(400, f"the request body must be a JSON object: {first['msg']}")
        return error_response(400, f"invalid field {field!r}: {first['msg']}", param=field)

    def check_model(name: Optional[str]) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    async def run(job: Callable[[], Any]) -> Any:
        try:
            future = queue.submit(job)
        except QueueFull as e:
            raise APIError(503, str(e), code="queue_full") from None
        return await asyncio.wrap_future(future)

    @router.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "hydra-umm"}]}

    if "understand" in tasks:
        tokenizer = pipe.model.text_tokenizer

        async def stream_chunks(head: dict, tokens: Iterator[int], max_new: int) -> AsyncIterator[str]:
            """Server-sent chunks of the answer as the model decodes it."""
            def chunk(delta: dict, finish_reason: Optional[str] = None) -> str:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

            count = 0

            def counted() -> Iterator[int]:
                nonlocal count
                for token in tokens:
                    count += 1
                    yield token

            deltas = text_deltas(counted(), tokenizer)
            yield chunk({"role": "assistant", "content": ""})
            while (delta := await asyncio.to_thread(next, deltas, None)) is not None:  # decoding runs meanwhile
                yield chunk({"content": delta})
            yield chunk({}, "length" if count >= max_new else "stop")
            yield "data: [DONE]\n\n"

        @router.post("/chat/completions")
        async def chat_completions(body: ChatRequest):
            body.reject_unsupported()
            check_model(body.model)
            image, turns = await asyncio.to_thread(split_messages, body.messages, max_image_bytes)  # decodes
            prompt = conversation_prompt(turns, tokenizer, pipe.model.cfg.umm.max_text_len)
            max_new = body.max_completion_tokens or body.max_tokens or 32
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name,
                    "system_fingerprint": None}
            if body.stream:
                try:
                    tokens = answer_stream(queue, pipe, image, prompt, max_new, body.temperature, body.seed)
                except QueueFull as e:
                    raise APIError(503, str(e), code="queue_full") from None
                return StreamingResponse(stream_chunks(head, tokens, max_new), media_type="text/event-stream")
            (ids,) = await run(lambda: pipe.answer_ids([image], [prompt], max_new, body.temperature, body.seed))
            finish = "length" if len(ids) >= max_new else "stop"
            model = pipe.model  # the positions the answer was read from: the (cut) question and the image block
            prompt_tokens = model.layout([model.understanding_segments(prompt)]).input_ids.shape[1]
            return {
                **head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": tokenizer.decode(
                    ids, skip_special_tokens=True)}, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                          "total_tokens": prompt_tokens + len(ids)},
            }

    if "generate" in tasks:
        image_size = pipe.image_size

        @router.post("/images/generations")
        async def images_generations(body: ImageRequest) -> dict:
            body.reject_unsupported()
            check_model(body.model)
            if not body.prompt.strip():
                raise APIError(400, "the prompt is empty", param="prompt", code="empty_prompt")
            if body.sampler is not None and body.sampler not in pipe.generation_options.samplers:
                raise APIError(400, f"sampler {body.sampler!r} is not one of this model's "
                               f"{list(pipe.generation_options.samplers) or 'none (it takes no sampler)'}",
                               param="sampler")
            native = f"{image_size}x{image_size}"
            if body.size not in (None, native):
                raise APIError(400, f"size {body.size!r} is not supported: this model generates {native}",
                               param="size")
            images = await run(lambda: pipe.generate([body.prompt] * body.n, steps=body.steps,
                                                     cfg_scale=body.cfg_scale, sampler=body.sampler, seed=body.seed))
            return {"created": int(time.time()), "data": [{"b64_json": png_base64(im)} for im in images]}

    routes = [f"{method} {route.path}" for route in router.routes for method in sorted(route.methods)]

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, path: str) -> None:  # last: else the page (mounted at /) answers
        raise APIError(404, f"no route {request.method} /v1/{path} on this server; its routes: {', '.join(routes)}")

    app.include_router(router)
