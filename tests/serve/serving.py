"""Constants and helpers shared by the serving tests (a module name no other test folder uses)."""

import base64
import io
import socket

from PIL import Image

TEXTS = ["a red square", "a blue circle on the left", "what colour is the square?", "red", "blue", "how many?"]
MAX_IMAGE_BYTES = 64 << 10  # small, so that the size-limit case is cheap to send
QUEUE_DEPTH = 4
MODEL_NAME = "tiny-hydra"


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
