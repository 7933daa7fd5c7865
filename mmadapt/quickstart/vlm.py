"""`mmadapt quickstart vlm`: a tiny vision-language model learns coloured-shape questions in two stages."""

from __future__ import annotations

from pathlib import Path

from mmadapt.quickstart.media_qa import packaged_config, run_media_qa

# Connector choices for --connector, sized for the tiny task (16 patch tokens in).
CONNECTORS = {
    "linear": {"name": "linear"},
    "mlp": {"name": "mlp", "depth": 2},
    "qformer": {"name": "qformer", "num_query_tokens": 16, "num_layers": 2, "hidden_size": 64, "num_heads": 4,
                "intermediate_size": 128, "cross_attention_every": 1},
    "resampler": {"name": "resampler", "num_latents": 16, "depth": 2, "num_heads": 4, "head_dim": 16, "num_kv_heads": 2},
}


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    from mmadapt.errors import ConfigError

    raw = packaged_config("vlm")
    if connector is not None:
        if connector not in CONNECTORS:
            raise ConfigError(f"--connector {connector!r}; valid: {', '.join(CONNECTORS)}")
        raw["model"]["connectors"]["image"] = CONNECTORS[connector]
    return run_media_qa(raw, Path(out), title=f"quickstart vlm (connector: {connector or 'mlp'})")
