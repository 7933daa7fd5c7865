"""OpenAI chat messages -> mmadapt's prompt form: `[{"role", "content": str}]` with a placeholder where each
media part stood, and `{modality: [raw items]}` in placeholder order.

Content parts: `{"type": "text", "text"}`, `{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}`,
`{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}`. Only data: URLs are taken: the server
never fetches a URL a request names. Errors name the message and part (`messages[1].content[0]`).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from mmadapt.errors import DataError
from mmadapt.model import PLACEHOLDERS

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MEDIA_BYTES = 20 * 2**20  # a decoded image or audio clip above this is refused, not decoded


def _b64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise DataError(f"{where}: expected a non-empty base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: not valid base64: {e}") from e
    if len(raw) > MAX_MEDIA_BYTES:
        raise DataError(f"{where}: {len(raw)} bytes, more than the {MAX_MEDIA_BYTES} bytes a media item may have")
    return raw


def decode_image(url: Any, where: str) -> Any:
    """A `data:image/...;base64,...` URL -> PIL RGB image (DataError when it is not one or does not decode)."""
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise DataError(f"{where}: only data: URLs are accepted (data:image/png;base64,...); the server fetches nothing")
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise DataError(f"{where}: the data: URL must be base64-encoded (data:image/png;base64,...)")
    raw = _b64(data, where)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"{where}: the image does not decode: {e}") from e


def parse_messages(messages: Any, modalities: tuple[str, ...]) -> tuple[list[dict[str, str]], dict[str, list[Any]]]:
    """OpenAI `messages` -> (prompt messages, media). `modalities`: what the model takes besides text."""
    if not isinstance(messages, list) or not messages:
        raise DataError("messages: expected a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    media: dict[str, list[Any]] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: expected an object with role and content")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise DataError(f"{where}.role: {message.get('role')!r}; valid: {', '.join(ROLES)}")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(_part(part, f"{where}.content[{j}]", modalities, media) for j, part in enumerate(content))
        else:
            raise DataError(f"{where}.content: expected a string or a list of content parts")
        out.append({"role": role, "content": text})
    return out, media


def _part(part: Any, where: str, modalities: tuple[str, ...], media: dict[str, list[Any]]) -> str:
    """One content part -> its text (a placeholder for a media part, whose item is appended to `media`)."""
    if not isinstance(part, dict):
        raise DataError(f"{where}: expected a content part object with a type")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise DataError(f"{where}.text: expected a string")
        return part["text"]
    if kind == "image_url":
        modality, spec = "image", part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
    elif kind == "input_audio":
        modality, spec = "audio", part.get("input_audio")
    else:
        raise DataError(f"{where}.type: {kind!r}; valid: text, image_url, input_audio")
    if modality not in modalities:
        raise DataError(f"{where}: this model has no {modality} encoder (it takes {', '.join(('text',) + modalities)})")
    if modality == "image":
        item = decode_image(url, f"{where}.image_url")
    else:
        if not isinstance(spec, dict):
            raise DataError(f"{where}.input_audio: expected {{data, format}}")
        item = _b64(spec.get("data"), f"{where}.input_audio.data")  # decoded by the audio encoder (checked on submit)
    media.setdefault(modality, []).append(item)
    return PLACEHOLDERS[modality]


def last_user_text(messages: list[dict[str, str]]) -> tuple[int, str]:
    """(index, text without placeholders) of the last user turn: the retrieval query."""
    from mmadapt.rag.augment import strip_placeholders

    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return i, strip_placeholders(messages[i]["content"])
    raise DataError("messages: retrieval needs a user message to take the query from")
