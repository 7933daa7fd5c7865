"""`mmadapt export --format hf`: a directory that transformers (and vLLM) load without mmadapt.

An HF vision-language checkpoint trained by mmadapt is written back in its family's own layout with
any LoRA adapter folded in; a model mmadapt composed is mapped onto `LlavaForConditionalGeneration`
where its parts allow it (export_llava.py). Either way the directory carries manifest.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)


def export_hf(model_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write `model_dir` (any mmadapt checkpoint) as a plain Hugging Face model directory in `out`."""
    from mmadapt.factory import load_model
    from mmadapt.io import atomic_directory, check_output_dir
    from mmadapt.lineage import write_manifest

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out}: must differ from --model")
    check_output_dir(out, "export", overwrite)  # only an earlier export, with --overwrite, and nothing foreign in it
    model = load_model(model_dir)
    if not hasattr(model, "processor"):  # composed by mmadapt: map its parts onto LLaVA
        from mmadapt.hf.export_llava import export_llava

        return export_llava(model, out, inputs=[model_dir], overwrite=overwrite)
    from peft import PeftModel

    had_adapter = isinstance(model.hf, PeftModel)
    model.merge_adapters()
    with atomic_directory(out) as tmp:
        model.hf.save_pretrained(str(tmp), safe_serialization=True)
        model.processor.save_pretrained(str(tmp))
        write_manifest(tmp, kind="export:hf", config={"format": "hf", "merged_adapter": had_adapter},
                       inputs=[model_dir], final_path=out)
    logger.info("exported %s -> %s (%s)", model_dir, out, type(model.hf).__name__)
    return out
