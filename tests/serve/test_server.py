"""`hydra-umm serve` as a real process on 127.0.0.1: the official openai client, bad input over
HTTP, a bounded burst against the depth-4 queue, and the command without a model."""

import asyncio
import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from hydra_umm import cli

from serving import MODEL_NAME, QUEUE_DEPTH, data_url

QUESTION = "what colour is the square?"


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def messages(image):
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": data_url(image)}}]}]


def test_openai_client_chats_about_an_image(openai_client, pipe, image):
    (expected,) = pipe.answer([image], [QUESTION], max_new_tokens=6)
    assert [m.id for m in openai_client.models.list()] == [MODEL_NAME]
    completion = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=messages(image), max_tokens=6, temperature=0
    )
    assert completion.choices[0].message.content == expected and completion.choices[0].message.role == "assistant"
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=messages(image), max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_openai_client_generates_an_image(openai_client, pipe):
    result = openai_client.images.generate(
        model=MODEL_NAME, prompt="a red square", n=1, size="32x32", response_format="b64_json",
        extra_body={"seed": 2},
    )
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))))
    assert np.array_equal(image, np.asarray(pipe.generate(["a red square"], seed=2)[0]))
    with pytest.raises(openai.BadRequestError, match="unsupported option 'quality'"):
        openai_client.images.generate(model=MODEL_NAME, prompt="a red square", quality="hd")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai_client.images.generate(model="dall-e-3", prompt="a red square")


def test_malformed_json_over_http_then_a_valid_request(server):
    bad = httpx.post(f"{server}/v1/images/generations", content=b'{"prompt": ', timeout=60,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]["message"]
    ok = httpx.post(f"{server}/v1/images/generations", json={"prompt": "a red square", "steps": 1}, timeout=60)
    assert ok.status_code == 200


def test_a_burst_of_32_gets_answers_or_503_and_the_server_stays_healthy(server, image):
    chat = {"model": MODEL_NAME, "messages": messages(image), "max_tokens": 4}
    generation = {"prompt": "a red square", "steps": 2}

    async def burst():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as c:
            requests = [c.post("/v1/chat/completions", json=chat) if i % 2 else
                        c.post("/v1/images/generations", json=generation) for i in range(32)]
            return await asyncio.gather(*requests)  # a client timeout (120 s) fails the test

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= QUEUE_DEPTH  # a refusal means QUEUE_DEPTH requests were waiting to be served
    assert all("queue is full" in r.json()["error"]["message"] for r in responses if r.status_code == 503)
    assert httpx.get(f"{server}/v1/models", timeout=60).status_code == 200
    after = httpx.post(f"{server}/v1/chat/completions", json=chat, timeout=60)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["role"] == "assistant"


def test_serve_without_a_model_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve"])
    assert exit_.value.code == 2
    assert "make demo" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)  # only this machine unless told
