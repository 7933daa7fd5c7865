"""`mmadapt quickstart audio`: a tiny audio-language model learns questions about generated tones in two stages."""

from __future__ import annotations

from pathlib import Path

from mmadapt.quickstart.media_qa import packaged_config, run_media_qa


def run(out: Path, connector: str | None = None) -> dict[str, float]:
    """Generate tones, measure exact match, train (stage 1: connector; stage 2: all), measure again."""
    from mmadapt.errors import ConfigError

    raw = packaged_config("audio")
    if connector is not None:
        from mmadapt import registry

        if connector not in registry.names("connector"):
            raise ConfigError(f"--connector {connector!r}; valid: {', '.join(registry.names('connector'))}")
        raw["model"]["connectors"]["audio"] = {"name": connector}
    return run_media_qa(raw, Path(out), title=f"quickstart audio (connector: {connector or 'mlp'})")
