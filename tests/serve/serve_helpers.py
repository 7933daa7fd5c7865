"""Request payloads for the serve tests: media as the OpenAI API carries them (base64 data)."""

from __future__ import annotations

import base64
import io


def png_data_url(colour: tuple[int, int, int] = (255, 0, 0)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wav_base64(seconds: float = 0.3, rate: int = 16000) -> str:
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()
