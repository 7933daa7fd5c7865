"""HFVisionLM: an existing Hugging Face vision-language model and its processor, trained by mmadapt's trainer.

The HF model runs its own forward (vision tower, projector, M-RoPE, image splitting: nothing is
copied); this wrapper gives it the surface the trainer, objectives and CLI use for models mmadapt
composes: `forward(input_ids, attention_mask, media)`, `generate`, parts named encoders /
connectors / llm, and save / load. It saves in the family's own format, so the output directory
loads with `AutoModelForImageTextToText` and `AutoProcessor` without mmadapt; a LoRA run saves a
standard peft adapter for that HF class (`adapter_config.json` + `adapter_model.safetensors`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mmadapt.config import ModelConfig, PeftConfig, VLMConfig, from_dict, to_dict
from mmadapt.data.tokenisation import TokenisationSpec
from mmadapt.errors import ConfigError
from mmadapt.hf.families import Family, family_for
from mmadapt.layout import MODEL_CONFIG_FILE  # the same marker file as composed checkpoints
from mmadapt.peft_names import ADAPTER_CONFIG

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _load_hf(source: str, cfg: VLMConfig, where: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        hf_config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read a model config from {source!r}: {e}") from e
    family_for(hf_config.model_type, where)
    kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot load {source!r} as an image-text-to-text model: {e}") from e


def load_processor(source: str, trust_remote_code: bool, where: str) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot load a processor from {source!r} (a VLM checkpoint needs its processor "
                          f"files: preprocessor_config.json, tokenizer, chat template): {e}") from e
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ConfigError(f"{where}: {source!r} holds a {type(processor).__name__}, not a vision-language processor "
                          "(with a tokenizer and an image processor)")
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


class HFVisionLM(nn.Module):
    """A transformers VLM (`self.hf`, peft-wrapped with LoRA) + its processor, under mmadapt's model surface."""

    def __init__(self, hf_model: nn.Module, processor: Any, config: ModelConfig, family: Family) -> None:
        super().__init__()
        self.hf = hf_model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_config = config
        self.family = family
        self.encoders: dict[str, nn.Module] = {}  # media go through the processor, not mmadapt encoders
        self.modalities = ("image",)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config: ModelConfig, is_trainable: bool = True, merge_adapter: bool | None = None) -> "HFVisionLM":
        """Load `model.vlm` (or the `init_from` checkpoint of an earlier stage), its processor and adapter."""
        cfg = config.vlm
        if cfg is None:
            raise ConfigError("HFVisionLM needs model.vlm (a Hugging Face vision-language checkpoint)")
        source, adapter = cfg.name_or_path, cfg.adapter
        if config.init_from:
            source, adapter = _checkpoint_sources(Path(config.init_from))
        elif is_adapter_dir(source):  # a plain peft adapter directory: its base comes from adapter_config.json
            adapter, source = source, _adapter_base(Path(source))
        hf = _load_hf(source, cfg, "model.vlm.name_or_path")
        family = family_for(hf.config.model_type, "model.vlm.name_or_path")
        processor = load_processor(cfg.processor or (adapter if adapter and _has_processor(adapter) else source),
                                   cfg.trust_remote_code, "model.vlm.processor")
        if adapter:
            from peft import PeftModel

            hf = PeftModel.from_pretrained(hf, str(adapter), is_trainable=is_trainable)
            if merge_adapter if merge_adapter is not None else (cfg.merge_adapter or config.init_from):
                hf = hf.merge_and_unload()  # a new stage trains on top of the previous stage's result
                logger.info("merged the adapter %s into the weights", adapter)
        return cls(hf, processor, config, family)

    @classmethod
    def from_pretrained(cls, directory: str | Path, is_trainable: bool = False,
                        trust_remote_code: bool = False) -> "HFVisionLM":
        from mmadapt.lineage import check_complete
        from mmadapt.model import untrusted_yaml

        directory = Path(directory)
        check_complete(directory, kind="loading")  # a half-replaced or tampered output is refused, not loaded
        raw = untrusted_yaml(directory / MODEL_CONFIG_FILE, trust_remote_code)  # the yaml never enables remote code
        config = from_dict(ModelConfig, raw, path=str(directory / MODEL_CONFIG_FILE))
        config.init_from = str(directory)
        model = cls.from_config(config, is_trainable=is_trainable, merge_adapter=False)  # an adapter stays one
        model.model_config.init_from = None
        return model

    # ------------------------------------------------------------------ the model surface
    def tokenisation_spec(self) -> TokenisationSpec:
        """What the data side needs: the processor renders, expands and preprocesses images itself."""
        return TokenisationSpec(self.tokenizer, processor=self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def parameter_group(self, name: str) -> str:
        """encoders | connectors | llm for one of this wrapper's parameter names (freezing, per-part lr)."""
        inner = name[len("hf."):] if name.startswith("hf.") else name
        return self.family.part_of(inner) or "llm"

    def model_inputs(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """The family's extra per-token inputs: models whose positions depend on where the images are (Qwen2.5-VL's
        M-RoPE) read them from `mm_token_type_ids`, which the processor makes from the ids (as here)."""
        media = dict(media or {})
        if media and self._takes_token_types and "mm_token_type_ids" not in media:
            types = self.processor.create_mm_token_type_ids(input_ids.tolist())
            media["mm_token_type_ids"] = torch.tensor(types, dtype=torch.int, device=input_ids.device)
        return media

    @property
    def _takes_token_types(self) -> bool:
        import inspect

        return "mm_token_type_ids" in inspect.signature(self._base().forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                media: dict[str, torch.Tensor] | None = None, labels: torch.Tensor | None = None, **kwargs: Any):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                       **self.model_inputs(input_ids, media), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 media: dict[str, torch.Tensor] | None = None, **generate_kwargs: Any) -> torch.Tensor:
        """New token ids only (prompts left-padded)."""
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        out = self.hf.generate(input_ids=input_ids, attention_mask=attention_mask,
                               **self.model_inputs(input_ids, media), **generate_kwargs)
        return out[:, input_ids.shape[1]:]

    def enable_gradient_checkpointing(self) -> None:
        self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.hf.config.use_cache = False

    # ------------------------------------------------------------------ adapters
    def linear_modules(self, part: str, suffixes: list[str] | str) -> list[str]:
        """Full names of the nn.Linear modules of one part (LoRA targets), optionally by name suffix."""
        names = []
        for name, module in self._base().named_modules():
            if not isinstance(module, nn.Linear) or self.family.part_of(name + ".weight") != part:
                continue
            if name == "lm_head":
                continue  # the output head stays full rank (peft's all-linear does the same)
            if isinstance(suffixes, str) and suffixes.lower() == "all-linear":
                names.append(name)
            elif any(name == s or name.endswith("." + s) for s in ([suffixes] if isinstance(suffixes, str) else suffixes)):
                names.append(name)
        return names

    def apply_peft(self, cfg: PeftConfig, train_modules: list[str]) -> None:
        """LoRA/DoRA on the parts in `peft.apply_to`; parts trained fully alongside (`train_modules`) are saved in
        the adapter as peft's modules_to_save, so the adapter directory is complete on its own."""
        from peft import PeftModel, get_peft_model

        from mmadapt.adapters import lora_config

        if cfg.quantization != "none":
            raise ConfigError("peft.quantization: QLoRA is supported for model.llm; for model.vlm use plain LoRA")
        if isinstance(self.hf, PeftModel):
            logger.info("the model already has an adapter: merging it before adding a new one")
            self.hf = self.hf.merge_and_unload()
        unknown = [p for p in cfg.apply_to if p not in ("llm", "encoders")]
        if unknown or not cfg.apply_to:
            raise ConfigError(f"peft.apply_to: {cfg.apply_to!r}; valid entries: llm, encoders")
        targets = [name for part in cfg.apply_to for name in self.linear_modules(part, cfg.target_modules)]
        if not targets:
            raise ConfigError(f"peft.target_modules: {cfg.target_modules!r} matches no linear layer of "
                              f"{'+'.join(cfg.apply_to)} in this {self.family.hf_class}")
        full_parts = [p for p in ("connectors", "encoders") if p in train_modules and p not in cfg.apply_to]
        save = sorted({prefix.split(".")[-1] for p in full_parts for prefix in self.family.parts[p]})
        config = lora_config(cfg, target_modules=targets)
        config.modules_to_save = save or None
        self.hf = get_peft_model(self.hf, config)
        logger.info("peft: %s r=%d on %d linear layers of %s%s", cfg.method, cfg.r, len(targets), "+".join(cfg.apply_to),
                    f"; trained fully and saved with the adapter: {save}" if save else "")

    def merge_adapters(self) -> None:
        from peft import PeftModel

        if isinstance(self.hf, PeftModel):
            self.hf = self.hf.merge_and_unload()

    def _base(self) -> nn.Module:
        from peft import PeftModel

        return self.hf.get_base_model() if isinstance(self.hf, PeftModel) else self.hf

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, atomic: bool = True, manifest: dict[str, Any] | None = None) -> Path:
        """The family's own layout (config.json, safetensors, processor files), or a peft adapter with a LoRA model,
        and the manifest loading checks."""
        from mmadapt.lineage import save_model_dir

        return save_model_dir(directory, self._write, atomic, manifest)

    def _write(self, directory: Path) -> None:
        from peft import PeftModel

        from mmadapt.io import atomic_write_text

        vlm = self.model_config.vlm  # set: from_config requires it
        saved = VLMConfig(name_or_path=".", dtype=vlm.dtype, attn_implementation=vlm.attn_implementation)
        if isinstance(self.hf, PeftModel):
            # peft records the base as it was named when loaded (maybe relative to the working directory);
            # a local base is recorded absolute, so the adapter loads from anywhere on this machine.
            peft_config = self.hf.peft_config["default"]
            base = peft_config.base_model_name_or_path
            if base and Path(base).is_dir():
                peft_config.base_model_name_or_path = str(Path(base).resolve())
            saved.name_or_path, saved.adapter = peft_config.base_model_name_or_path, "."
        self.hf.save_pretrained(str(directory), safe_serialization=True)
        self.processor.save_pretrained(str(directory))
        atomic_write_text(directory / MODEL_CONFIG_FILE,
                          yaml.safe_dump(to_dict(ModelConfig(vlm=saved)), sort_keys=False))

    def load_weights_from(self, directory: str | Path, adapters: bool = False) -> None:
        """Load a checkpoint this wrapper saved (a resumed run): full weights, or the adapter into this peft model."""
        from peft import PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        if is_adapter_dir(directory):
            if not isinstance(self.hf, PeftModel):
                raise ConfigError(f"{directory} holds an adapter but this model has none (peft config changed?)")
            set_peft_model_state_dict(self.hf, load_file(str(directory / "adapter_model.safetensors")))
        else:
            source, _ = _checkpoint_sources(directory)
            fresh = _load_hf(source, self.model_config.vlm, str(directory))
            result = self._base().load_state_dict(fresh.state_dict(), strict=False)
            if result.unexpected_keys or [k for k in result.missing_keys if "lora_" not in k]:
                raise ConfigError(f"{directory}: weights do not match the model (missing {result.missing_keys[:5]}, "
                                  f"unexpected {result.unexpected_keys[:5]})")
        logger.info("loaded weights from %s", directory)


def _has_processor(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))


def _adapter_base(adapter: Path) -> str:
    from mmadapt.llm import peft_adapter_base

    base = peft_adapter_base(adapter, "model.vlm")
    if base is None:
        raise ConfigError(f"{adapter}: not a peft adapter directory (no {ADAPTER_CONFIG})")
    return base


def _checkpoint_sources(directory: Path) -> tuple[str, str | None]:
    """(weights source, adapter or None) of a checkpoint HFVisionLM saved."""
    if not directory.is_dir():
        raise ConfigError(f"model.init_from: {directory} is not a directory")
    if is_adapter_dir(directory):
        return _adapter_base(directory), str(directory)
    return str(directory), None
