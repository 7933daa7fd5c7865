"""MultimodalLM: encoders + connectors + any Hugging Face causal LM, fused by placeholder scatter.

Each modality has one placeholder token (`<image>`, `<audio>`, `<video>`), expanded at tokenisation
to the connector's number of tokens; `embed` writes the connector outputs into `inputs_embeds` at
those positions (masked_scatter, as torchtune's early fusion). With no media the model is exactly
the text LM: the same `inputs_embeds` path, nothing written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from mmadapt import registry
from mmadapt.adapters import merged_state_dict, save_peft_llm
from mmadapt.config import LLMConfig, ModelConfig, from_dict, to_dict
from mmadapt.data.tokenisation import PLACEHOLDERS, EncodedMedia, TokenisationSpec, with_placeholders
from mmadapt.errors import ConfigError, DataError, NotAModelError
from mmadapt.interfaces import CheckedEncoder, ReloadableEncoder
from mmadapt.io import atomic_write_text, contained_path
from mmadapt.lineage import check_complete, save_model_dir
from mmadapt.llm import load_llm, load_tokenizer, read_weights
from mmadapt.merge.lazy import check_index
from mmadapt.layout import ADAPTER_DIR, LLM_DIR, MODEL_CONFIG_FILE, MULTIMODAL_WEIGHTS
from mmadapt.peft_names import wrap_base_layer

logger = logging.getLogger(__name__)

CHECKPOINT_REF = "@checkpoint/"  # encoder spec values under the checkpoint dir (rewritten by reload_spec)

class MultimodalLM(nn.Module):
    """Encoders + connectors + causal LM. `media[modality]` holds the batch's items in placeholder order."""

    def __init__(self, llm: nn.Module, tokenizer: Any, encoders: dict[str, nn.Module], connectors: dict[str, nn.Module],
                 config: ModelConfig) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoders = nn.ModuleDict(encoders)
        self.connectors = nn.ModuleDict(connectors)
        self.model_config = config
        self.placeholders = {m: config.placeholders.get(m, PLACEHOLDERS[m]) for m in encoders}  # modality -> token
        self._placeholder_ids = {m: tokenizer.convert_tokens_to_ids(t) for m, t in self.placeholders.items()}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config: ModelConfig, load_init_weights: bool = True) -> "MultimodalLM":
        tokenizer = load_tokenizer(config.llm)
        for modality in config.encoders:
            if modality not in PLACEHOLDERS:
                raise ConfigError(f"model.encoders.{modality}: unknown modality; valid: {', '.join(PLACEHOLDERS)}")
        tokens = [config.placeholders.get(m, PLACEHOLDERS[m]) for m in config.encoders]
        missing = [t for t in tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        llm = load_llm(config.llm, vocab_size=len(tokenizer))
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        hidden = llm.get_input_embeddings().embedding_dim
        encoders, connectors = {}, {}
        for modality, spec in config.encoders.items():
            encoder = registry.build("encoder", spec, where=f"model.encoders.{modality}")
            if encoder.modality != modality:
                raise ConfigError(f"model.encoders.{modality}: encoder {spec['name']!r} is a {encoder.modality} encoder")
            encoders[modality] = encoder
            connectors[modality] = registry.build(
                "connector", config.connectors[modality], where=f"model.connectors.{modality}",
                in_dim=encoder.hidden_size, out_dim=hidden,
            )
        model = cls(llm, tokenizer, encoders, connectors, config)
        if config.init_from and load_init_weights:
            model.load_weights_from(config.init_from)
        return model

    def enable_gradient_checkpointing(self) -> None:
        self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.llm.config.use_cache = False

    def placeholder_id(self, modality: str) -> int:
        return self._placeholder_ids[modality]

    def num_media_tokens(self, modality: str) -> int:
        """How many LLM positions one item of `modality` occupies (its placeholder's expansion)."""
        return self.connectors[modality].num_tokens(self.encoders[modality].num_features)

    def tokenisation_spec(self) -> TokenisationSpec:
        """What the data side needs to tokenise and collate for this model (no reference to the model itself)."""
        return TokenisationSpec(
            self.tokenizer, {m: self.num_media_tokens(m) for m in self.encoders}, dict(self.placeholders),
            preprocess={m: encoder.preprocess for m, encoder in self.encoders.items()},
            check={m: encoder.check for m, encoder in self.encoders.items() if isinstance(encoder, CheckedEncoder)},
        )

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ fusion
    def encode(self, modality: str, items: torch.Tensor | EncodedMedia) -> torch.Tensor:
        """Items [n, ...] (or their cached features) -> LLM-space tokens [n, M, hidden]."""
        connector = self.connectors[modality]
        if isinstance(items, EncodedMedia):
            param = next(connector.parameters())
            return connector(items.features.to(device=param.device, dtype=param.dtype))  # [n, N, D] -> [n, M, H]
        encoder = self.encoders[modality]
        param = next(encoder.parameters(), None)
        if param is not None:
            items = items.to(device=param.device, dtype=param.dtype if items.is_floating_point() else items.dtype)
        features = encoder(items)  # [n, N, D]
        return self.connectors[modality](features.to(next(self.connectors[modality].parameters()).dtype))  # [n, M, H]

    def embed(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Token embeddings with every placeholder position replaced by its media token."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, T, H]
        media = media or {}
        for modality, token_id in self._placeholder_ids.items():
            mask = input_ids == token_id  # [B, T]
            items = media.get(modality)
            n_items = 0 if items is None else len(items)
            if n_items == 0:
                if bool(mask.any()):
                    raise DataError(f"the batch has {int(mask.sum())} {self.placeholders[modality]} positions but no {modality} items")
                continue
            tokens = self.encode(modality, items)  # [n, M, H]
            if int(mask.sum()) != tokens.shape[0] * tokens.shape[1]:
                raise DataError(
                    f"{self.placeholders[modality]}: {int(mask.sum())} placeholder positions in the batch, but {tokens.shape[0]} "
                    f"{modality} items x {tokens.shape[1]} tokens each; expand placeholders with the collator"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), tokens.to(embeds.dtype))
        unknown = set(media) - set(self._placeholder_ids)
        if unknown:
            raise DataError(f"media for {sorted(unknown)} but the model has encoders only for {sorted(self._placeholder_ids)}")
        return embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                media: dict[str, torch.Tensor] | None = None, labels: torch.Tensor | None = None, **kwargs: Any):
        embeds = self.embed(input_ids, media)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 media: dict[str, torch.Tensor] | None = None, **generate_kwargs: Any) -> torch.Tensor:
        """New token ids only (prompts should be left-padded for batched generation)."""
        embeds = self.embed(input_ids, media)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # ------------------------------------------------------------------ persistence
    def multimodal_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and connector weights; LoRA injected into an encoder is folded in under the original names,
        so the checkpoint loads into a fresh encoder."""
        state = {f"encoders.{k}": v for k, v in merged_state_dict(self.encoders).items()}
        state.update({f"connectors.{k}": v for k, v in self.connectors.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def saved_config(self, directory: Path) -> ModelConfig:
        """The config that rebuilds this model from `directory` alone (no hub, no original files)."""
        encoders = {}
        for modality, spec in self.model_config.encoders.items():
            encoder = self.encoders[modality]
            encoders[modality] = (encoder.reload_spec(dict(spec), directory, modality)
                                  if isinstance(encoder, ReloadableEncoder) else dict(spec))
        llm = LLMConfig(name_or_path=CHECKPOINT_REF + LLM_DIR, tokenizer=CHECKPOINT_REF + LLM_DIR,
                        dtype=self.model_config.llm.dtype, trust_remote_code=self.model_config.llm.trust_remote_code,
                        attn_implementation=self.model_config.llm.attn_implementation)
        return ModelConfig(llm=llm, encoders=encoders, connectors=dict(self.model_config.connectors),
                           placeholders=dict(self.model_config.placeholders))

    def save_pretrained(self, directory: str | Path, atomic: bool = True, manifest: dict[str, Any] | None = None) -> Path:
        """Write the whole model (safetensors only) and its manifest. `manifest`: kwargs for lineage.write_manifest."""
        directory = Path(directory)
        return save_model_dir(directory, lambda folder: self._write(folder, directory), atomic, manifest)

    def _write(self, directory: Path, final: Path) -> None:
        if is_peft_model(self.llm):
            save_peft_llm(self.llm, directory / LLM_DIR, directory / ADAPTER_DIR)
        else:
            self.llm.save_pretrained(directory / LLM_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(directory / LLM_DIR)
        state = self.multimodal_state_dict()
        if state:
            save_file(state, str(directory / MULTIMODAL_WEIGHTS), metadata={"format": "pt"})
        atomic_write_text(directory / MODEL_CONFIG_FILE, yaml.safe_dump(to_dict(self.saved_config(directory)), sort_keys=False))

    @classmethod
    def from_pretrained(cls, directory: str | Path, is_trainable: bool = False,
                        trust_remote_code: bool = False) -> "MultimodalLM":
        """Load a saved model. The directory is data, never code: every `trust_remote_code` its yaml holds is
        replaced by the caller's `trust_remote_code` (the person running the command: a CLI flag or their own
        run config), and the directory must be complete (manifest.json matching its weight files)."""
        directory = Path(directory)
        path = directory / MODEL_CONFIG_FILE
        if not path.is_file():
            raise NotAModelError(f"{directory}: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE})")
        check_complete(directory, kind="loading", parts=(LLM_DIR, ADAPTER_DIR, MULTIMODAL_WEIGHTS, "encoders"))
        raw = untrusted_yaml(path, trust_remote_code)
        raw = resolve_checkpoint_refs(raw, directory)
        config = from_dict(ModelConfig, raw, path=str(path))
        check_weight_paths(directory)
        model = cls.from_config(config, load_init_weights=False)
        if (directory / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, str(directory / ADAPTER_DIR), is_trainable=is_trainable)
        model._load_multimodal(directory)
        return model

    def _load_multimodal(self, directory: Path) -> None:
        weights = directory / MULTIMODAL_WEIGHTS
        if not weights.is_file():
            if len(self.encoders):
                raise ConfigError(f"{directory}: {MULTIMODAL_WEIGHTS} missing for encoders {list(self.encoders)}")
            return
        state = read_weights(weights)
        own = set(self.encoders.state_dict()) | set(self.connectors.state_dict())
        prefixed = {k.split(".", 1)[1] for k in state}
        if prefixed != own:
            raise ConfigError(f"{weights}: weights do not match the model (missing {sorted(own - prefixed)[:5]}, "
                              f"unexpected {sorted(prefixed - own)[:5]})")
        try:
            self.encoders.load_state_dict({k[len("encoders."):]: v for k, v in state.items() if k.startswith("encoders.")})
            self.connectors.load_state_dict({k[len("connectors."):]: v for k, v in state.items() if k.startswith("connectors.")})
        except RuntimeError as e:  # size mismatch: encoders/connectors of another width
            raise ConfigError(f"{weights}: tensors of other shapes than this model's encoders/connectors; valid: "
                              f"a checkpoint of the same architecture: {str(e).splitlines()[-1].strip()}") from None

    def load_weights_from(self, directory: str | Path, adapters: bool = False) -> None:
        """Load another checkpoint's weights into this model (stage 2 from stage 1, or a resumed run).

        `adapters=True` (resume) also loads a saved LoRA adapter into this already peft-wrapped LLM.
        """
        directory = Path(directory)
        if not (directory / MODEL_CONFIG_FILE).is_file():
            raise NotAModelError(f"{directory}: not an mmadapt checkpoint (no {MODEL_CONFIG_FILE})")
        has_adapter = (directory / ADAPTER_DIR).is_dir()
        if has_adapter and not (adapters and is_peft_model(self.llm)):
            raise ConfigError(f"model.init_from: {directory} holds an adapter; merge it first (mmadapt export --merge-adapters)")
        state: dict[str, torch.Tensor] = {}
        for f in sorted((directory / LLM_DIR).glob("*.safetensors")):
            state.update(read_weights(f))
        target = self.llm.get_base_model() if is_peft_model(self.llm) else self.llm
        if is_peft_model(self.llm):  # the base weights sit under `.base_layer` inside LoRA-wrapped modules
            own = set(target.state_dict())
            state = {wrap_base_layer(k, own): v for k, v in state.items()}
        try:
            result = target.load_state_dict(state, strict=False)
        except RuntimeError as e:  # size mismatch: a checkpoint of another width / vocabulary
            raise ConfigError(f"model.init_from: {directory}/{LLM_DIR} has tensors of other shapes than this LLM "
                              f"(another hidden size or vocabulary?); valid: a checkpoint of the same architecture: "
                              f"{str(e).splitlines()[-1].strip()}") from None
        missing = [k for k in result.missing_keys if "lora_" not in k and k not in (getattr(target, "_tied_weights_keys", None) or {})]
        if missing or result.unexpected_keys:
            raise ConfigError(f"{directory}/{LLM_DIR} does not match the LLM "
                              f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
        if has_adapter:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.llm, read_weights(directory / ADAPTER_DIR / "adapter_model.safetensors"))
        self._load_multimodal(directory)
        logger.info("loaded weights from %s", directory)


def with_model_placeholders(model: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages whose media markers (<image>, ...) are written as `model`'s own placeholder tokens."""
    return with_placeholders(getattr(model, "placeholders", {}), messages)


def is_peft_model(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, PeftModel)


def resolve_checkpoint_refs(data: Any, directory: Path, where: str = "") -> Any:
    """`@checkpoint/REL` values -> paths under `directory`; a REL that leaves the directory is refused."""
    if isinstance(data, dict):
        return {k: resolve_checkpoint_refs(v, directory, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_checkpoint_refs(v, directory, f"{where}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str) and data.startswith(CHECKPOINT_REF):
        return str(contained_path(directory, data[len(CHECKPOINT_REF):], f"{directory / MODEL_CONFIG_FILE}: {where}"))
    return data


def untrusted_yaml(path: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """A checkpoint's yaml with every `trust_remote_code` (LLM, VLM, encoder specs, at any depth) set to the
    caller's choice: an artefact never turns on code execution by itself."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: unreadable YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of model config keys, got {type(raw).__name__}")
    asked: list[str] = []

    def force(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "trust_remote_code":
                    if value is True and not trust_remote_code:
                        asked.append(f"{where}{key}")
                    out[key] = value is True and trust_remote_code  # needs both: the file's need, the caller's consent
                else:
                    out[key] = force(value, f"{where}{key}.")
            return out
        if isinstance(node, list):
            return [force(v, f"{where}{i}.") for i, v in enumerate(node)]
        return node

    raw = force(raw, "")
    if asked:
        logger.warning("%s sets %s: ignored (a checkpoint never enables remote code; pass --trust-remote-code "
                       "if you trust its code)", path, ", ".join(asked))
    return raw


def check_weight_paths(directory: Path) -> None:
    """Shard names in every `*.safetensors.index.json` of the model's folders stay inside their folder
    (the HF loader joins them to the folder, so an absolute or `../` name would be read from anywhere)."""
    for folder in (directory / LLM_DIR, directory / ADAPTER_DIR):
        if folder.is_dir():
            check_index(folder)
