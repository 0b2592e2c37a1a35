"""The /v1 routes in-process: shapes of the answers, agreement with the pipeline, seeds, every bad
input's 4xx (with a valid request working right after), and the full queue's 503."""

import asyncio
import base64
import io
import json
import threading

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from hydra_umm.inference import HydraPipeline
from hydra_umm.serve import create_app

from serving import MAX_IMAGE_BYTES, MODEL_NAME, data_url

QUESTION = "what colour is the square?"


def chat_body(image, **options):
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **options}


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL_NAME]
    assert body["data"][0]["object"] == "model"


def test_image_generation_matches_the_pipeline_and_follows_the_seed(client, pipe):
    request = {"prompt": "a red square", "n": 2, "size": "32x32", "seed": 3, "response_format": "b64_json"}
    first = client.post("/v1/images/generations", json=request).json()["data"]
    again = client.post("/v1/images/generations", json=request).json()["data"]
    other = client.post("/v1/images/generations", json={**request, "seed": 4}).json()["data"]
    images = [decode_png(d["b64_json"]) for d in first]
    assert [im.shape for im in images] == [(32, 32, 3)] * 2 and images[0].dtype == np.uint8
    expected = pipe.generate(["a red square"] * 2, seed=3)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(images, expected))
    assert [d["b64_json"] for d in again] == [d["b64_json"] for d in first]
    assert not np.array_equal(decode_png(other[0]["b64_json"]), images[0])
    heun = client.post("/v1/images/generations", json={"prompt": "a red square", "steps": 2, "sampler": "heun",
                                                       "cfg_scale": 1.5}).json()["data"]
    assert np.array_equal(decode_png(heun[0]["b64_json"]),
                          np.asarray(pipe.generate(["a red square"], 2, 1.5, "heun", seed=0)[0]))


def test_chat_completion_answers_like_the_pipeline(client, pipe, image):
    body = client.post("/v1/chat/completions", json=chat_body(image, max_tokens=6, temperature=0)).json()
    (expected,) = pipe.answer([image], [QUESTION], max_new_tokens=6)
    ids = pipe.answer_ids([image], [QUESTION], max_new_tokens=6)[0]
    assert body["object"] == "chat.completion" and body["model"] == MODEL_NAME
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert choice["finish_reason"] == ("length" if len(ids) == 6 else "stop")
    assert body["usage"]["completion_tokens"] == len(ids)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + len(ids)
    short = [client.post("/v1/chat/completions", json=chat_body(image, temperature=0, **{key: 2})).json()
             for key in ("max_tokens", "max_completion_tokens")]  # the old name and the new one
    assert short[0]["choices"] == short[1]["choices"] and short[1]["usage"]["completion_tokens"] <= 2
    sampled = [client.post("/v1/chat/completions", json=chat_body(image, max_tokens=6, seed=s)).json()
               for s in (1, 1)]
    assert sampled[0]["choices"][0]["message"] == sampled[1]["choices"][0]["message"]
    assert sampled[0]["choices"][0]["message"]["content"] == pipe.answer([image], [QUESTION], 6, 1.0, seed=1)[0]
    long = chat_body(image, max_tokens=2, temperature=0)  # usage counts the question as cut to max_text_len
    long["messages"][0]["content"][0]["text"] = "how many red squares are there " * 200
    usage = client.post("/v1/chat/completions", json=long).json()["usage"]
    model = pipe.model
    assert usage["prompt_tokens"] == model.num_image_tokens + 2 + model.cfg.umm.max_text_len  # <vs> image <ve> text
    # a temperature just above 0 samples as greedy decoding does (its logits / t overflowed to a 500)
    cold = client.post("/v1/chat/completions", json=chat_body(image, max_tokens=6, temperature=1e-300))
    assert cold.status_code == 200 and cold.json()["choices"][0]["message"]["content"] == expected


def test_chat_completion_streams_openai_chunks(client, pipe, image):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(image, max_tokens=6, temperature=0,
                                                                        stream=True)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and len({c["id"] for c in chunks}) == 1 for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    ids = pipe.answer_ids([image], [QUESTION], max_new_tokens=6)[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == ("length" if len(ids) == 6 else "stop") and len(deltas) > 3
    assert "".join(d["content"] for d in deltas[1:-1]) == pipe.answer([image], [QUESTION], max_new_tokens=6)[0]


def test_earlier_turns_reach_the_model(client, pipe, image):
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "how many?"}]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 6, "temperature": 0}
    answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert answer == pipe.answer([image], [f"{QUESTION}\nred\nhow many?"], max_new_tokens=6)[0]


def test_a_16_bit_grey_image_is_read_as_its_8_bit_grey():
    from hydra_umm.serve.api import decode_data_url

    grey16 = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))  # mid grey, 128 * 257
    assert np.asarray(decode_data_url(data_url(grey16), 1 << 20)).tolist() == [[[128] * 3] * 8] * 8


def too_big_url() -> str:
    return "data:image/png;base64," + base64.b64encode(bytes(MAX_IMAGE_BYTES + 1000)).decode()


def huge_url() -> str:
    """A few kilobytes of PNG that would decode to 20 megapixels."""
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def text_bomb_url() -> str:
    """A small PNG whose compressed text chunk would inflate to megabytes (Pillow refuses it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 4_000_000, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def garbage_url() -> str:
    return "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()


def with_url(image, url):
    body = chat_body(image)
    body["messages"][0]["content"][1]["image_url"]["url"] = url
    return body


GEN = "/v1/images/generations"
CHAT = "/v1/chat/completions"
BAD = {
    "malformed JSON": (GEN, b'{"prompt": "a red', 400, "malformed JSON"),
    "not an object": (GEN, b'["a red square"]', 400, "JSON object"),
    "empty prompt": (GEN, {"prompt": "   "}, 400, "prompt is empty"),
    "missing prompt": (GEN, {"n": 1}, 400, "'prompt'"),
    "unknown model (images)": (GEN, {"prompt": "a", "model": "dall-e-3"}, 404, "'dall-e-3' does not exist"),
    "unsupported option": (GEN, {"prompt": "a", "quality": "hd"}, 400, "unsupported option 'quality'"),
    "url response format": (GEN, {"prompt": "a", "response_format": "url"}, 400, "'response_format'"),
    "other size": (GEN, {"prompt": "a", "size": "1024x1024"}, 400, "generates 32x32"),
    "too many images": (GEN, {"prompt": "a", "n": 100}, 400, "'n'"),
    "seed out of range": (GEN, {"prompt": "a", "seed": 2**64}, 400, "'seed'"),
    "negative seed (chat)": (CHAT, lambda im: chat_body(im, seed=-1), 400, "'seed'"),
    "unknown model (chat)": (CHAT, lambda im: {**chat_body(im), "model": "gpt-4o"}, 404, "'gpt-4o' does not exist"),
    "undecodable image": (CHAT, lambda im: with_url(im, garbage_url()), 400, "does not decode"),
    "not base64": (CHAT, lambda im: with_url(im, "data:image/png;base64,@@@@"), 400, "does not decode"),
    "text chunk bomb": (CHAT, lambda im: with_url(im, text_bomb_url()), 400, "does not decode"),
    "no such route": ("/v1/embeddings", {"input": "a"}, 404, "no route POST /v1/embeddings"),
    "wrong method": ("/v1/models", {}, 404, "its routes: GET /v1/models"),
    "remote image URL": (CHAT, lambda im: with_url(im, "https://example.com/a.png"), 400, "data URL"),
    "image over the size limit": (CHAT, lambda im: with_url(im, too_big_url()), 413, "over this server's limit"),
    "image over the pixel limit": (CHAT, lambda im: with_url(im, huge_url()), 413, "pixels"),
    "no image": (CHAT, lambda im: {**chat_body(im), "messages": [{"role": "user", "content": "hi"}]}, 400,
                 "exactly one image"),
    "empty question": (CHAT, lambda im: {**chat_body(im), "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(im)}}]}]}, 400,
        "non-empty question"),
    "unknown content part": (CHAT, lambda im: {**chat_body(im), "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {}}]}]}, 400, "messages.0.content.0': Input tag 'input_audio'"),
    "unsupported chat option": (CHAT, lambda im: chat_body(im, top_p=0.5), 400, "unsupported option 'top_p'"),
    "last turn not the user's": (CHAT, lambda im: {**chat_body(im), "messages": chat_body(im)["messages"] + [
        {"role": "assistant", "content": "red"}]}, 400, "last message"),
    "two choices": (CHAT, lambda im: chat_body(im, n=2), 400, "'n'"),
    "negative temperature": (CHAT, lambda im: chat_body(im, temperature=-1), 400, "'temperature'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(client, image, case):
    route, body, status, message = BAD[case]
    body = body(image) if callable(body) else body
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {
        "json": body}
    response = client.post(route, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    ok = client.post(GEN, json={"prompt": "a red square", "steps": 1})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1
    assert client.get("/").status_code == 200  # the page, outside /v1, is still served


class GatedPipeline(HydraPipeline):
    """Generation waits for a gate, so a test can hold the model busy."""

    def __init__(self, model, started: threading.Event, gate: threading.Event):
        super().__init__(model)
        self.started, self.gate = started, gate

    def generate(self, *args, **kwargs):
        self.started.set()
        self.gate.wait()
        return super().generate(*args, **kwargs)


def test_a_full_queue_answers_503_and_every_queued_request_completes(pipe):
    started, gate = threading.Event(), threading.Event()
    app = create_app(GatedPipeline(pipe.model, started, gate), MODEL_NAME, queue_depth=2)
    request = {"prompt": "a red square", "steps": 1}

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=120) as c:
            running = asyncio.create_task(c.post(GEN, json=request))
            await asyncio.to_thread(started.wait)  # the worker holds the first request
            waiting = [asyncio.create_task(c.post(GEN, json=request)) for _ in range(2)]
            while app.state.queue.waiting < 2:  # until both wait in the queue
                await asyncio.sleep(0.01)
            refused = await asyncio.gather(*(c.post(GEN, json=request) for _ in range(3)))
            gate.set()
            return await asyncio.gather(running, *waiting), refused

    served, refused = asyncio.run(burst())
    app.state.queue.close()
    assert [r.status_code for r in served] == [200] * 3
    assert [r.status_code for r in refused] == [503] * 3
    assert all(r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]["message"] for r in refused)
