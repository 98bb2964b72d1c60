"""What clients send, parsed: image fields (a data URL or plain base64), the question, and OpenAI chat completion
bodies (a body itself is read by `serving.errors.json_object`). Plain functions on bytes and dicts; a malformed
body is a ServiceError with the reason."""

from __future__ import annotations

import base64
import binascii

from ..serving.errors import ServiceError


def question(text: object, default: str) -> str:
    if text is None or (isinstance(text, str) and not text.strip()):
        return default
    if not isinstance(text, str):
        raise ServiceError("`text` must be a string")
    return text.strip()


def decode_image_field(value: object) -> bytes:
    """The bytes of a data URL (`data:image/png;base64,...`) or of plain base64 text."""
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(
            "`image` must be a data URL (data:image/png;base64,...) or base64 text", code="invalid_image"
        )
    value = value.strip()
    if value.startswith(("http://", "https://")):
        raise ServiceError(
            "remote image URLs are not fetched: send the image inline as a data URL (data:image/png;base64,...)",
            code="remote_image_url",
        )
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ServiceError("only base64 data URLs are accepted (data:image/png;base64,...)", code="invalid_image")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ServiceError(f"the image is not valid base64 ({error})", code="invalid_image") from error


def chat_request(payload: dict) -> tuple[str | None, str | None, bytes]:
    """(model, question, image bytes) from an OpenAI chat completions body: the last user message, its text
    parts joined, and its one `image_url` part. `max_tokens`/`max_completion_tokens` are checked but do not
    change the answer: its length is the backend's own (OCR's text cap, the model's max_new_tokens)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServiceError("`messages` must be a non-empty list")
    for limit in ("max_tokens", "max_completion_tokens"):
        value = payload.get(limit)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ServiceError(f"`{limit}` must be a positive integer")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ServiceError("`model` must be a string")
    users = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"]
    if not users:
        raise ServiceError("no message with role `user`")
    content = users[-1].get("content")
    if isinstance(content, str):
        raise ServiceError("the user message has no image: add an `image_url` content part", code="missing_image")
    if not isinstance(content, list):
        raise ServiceError("the user message's `content` must be a list of parts")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_url = part.get("image_url")
            images.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
        else:
            raise ServiceError(f"unsupported content part {kind!r}: use `text` and `image_url` parts")
    if len(images) != 1:
        raise ServiceError(f"send exactly one `image_url` part per request, not {len(images)}", code="missing_image")
    return model, "\n".join(text for text in texts if text.strip()) or None, decode_image_field(images[0])
