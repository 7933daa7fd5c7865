"""Media values as they appear in datasets -> files the encoders read: paths (relative to a media root),
`file://` and `data:` URLs, `{"path", "bytes"}` (Hugging Face `datasets` Image/Audio storage), OpenAI
`input_audio` `{"data", "format"}`, raw bytes. Embedded bytes are written once, content-addressed, to a cache."""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError
from mmadapt.io import atomic_write_bytes

DEFAULT_CACHE = "~/.cache/mmadapt/media"
_MAGIC = [(b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"RIFF", "wav"), (b"fLaC", "flac"),
          (b"ID3", "mp3"), (b"OggS", "ogg"), (b"\x1aE\xdf\xa3", "webm")]


def _extension(data: bytes, hint: str | None) -> str:
    if hint:
        return hint.lower().lstrip(".").split("+")[0].replace("jpeg", "jpg").replace("mpeg", "mp3")
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return "webp" if ext == "wav" and data[8:12] == b"WEBP" else ext
    if data[4:8] == b"ftyp":
        return "mp4"
    return "bin"


def cached_file(data: bytes, cache: Path, hint: str | None = None) -> Path:
    """`data` as a file in `cache` named by its SHA-256 (written atomically once; the same bytes reuse it)."""
    path = cache.expanduser() / f"{hashlib.sha256(data).hexdigest()}.{_extension(data, hint)}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: invalid base64 media data: {e}") from None


def media_file(value: Any, root: Path, cache: Path, where: str, modality: str) -> Path:
    """One media item as an absolute path (not checked for existence here: the example builder does that)."""
    if isinstance(value, (bytes, bytearray)):
        return cached_file(bytes(value), cache)
    if isinstance(value, dict):
        if value.get("bytes"):
            return cached_file(bytes(value["bytes"]), cache, Path(value.get("path") or "").suffix or None)
        if isinstance(value.get("data"), str):  # OpenAI input_audio: {"data": base64, "format": "wav"}
            return cached_file(_b64(value["data"], where), cache, value.get("format"))
        for key in ("path", "url", "image", "audio", "video"):
            if isinstance(value.get(key), (str, dict)):
                return media_file(value[key], root, cache, where, modality)
        raise DataError(f"{where}: a {modality} item {sorted(value)} has no path, url, bytes or data")
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: a {modality} item must be a path, URL or bytes, got {type(value).__name__}")
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header:
            raise DataError(f"{where}: only base64 data: URLs are supported")
        return cached_file(_b64(payload, where), cache, header[5:].split(";")[0].split("/")[-1] or None)
    if value.startswith(("http://", "https://")):
        raise DataError(f"{where}: {value[:80]} is a web URL; mmadapt reads local files only (download it first)")
    path = Path(value[len("file://"):] if value.startswith("file://") else value).expanduser()
    # absolute even when the data file was named relative to the working directory: builders join nothing more
    return path if path.is_absolute() else (root / path).absolute()
