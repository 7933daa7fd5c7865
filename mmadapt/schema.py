"""The run schema: one RunConfig per `mmadapt train` run (validated by mmadapt.config.from_dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class LLMConfig:
    """The causal LM: a hub id / local directory, or an AutoConfig spec built with random weights."""

    name_or_path: str | None = None
    config: dict[str, Any] | None = None  # e.g. {model_type: llama, hidden_size: 64, ...}
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("set exactly one of llm.name_or_path (hub id or directory) and llm.config (build from config)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("llm.config needs a model_type (e.g. llama, qwen2, gpt2)")
        if self.tokenizer is None and self.name_or_path is None:
            raise ValueError("llm.tokenizer is required when the LLM is built from llm.config")


@dataclass
class VLMConfig:
    """A Hugging Face vision-language checkpoint (LLaVA, LLaVA-NeXT, Qwen2.5-VL, Idefics3/SmolVLM), trained with
    its own modules and its own processor (image token, tiling, resolution, chat template)."""

    name_or_path: str  # a hub id or a local directory that AutoModelForImageTextToText loads
    processor: str | None = None  # defaults to name_or_path
    adapter: str | None = None  # a peft adapter directory for this model: continue training it (or merge it)
    merge_adapter: bool = False  # fold `adapter` into the weights before training (a new adapter, if any, goes on top)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@dataclass
class ModelConfig:
    llm: LLMConfig | None = None  # a causal LM that mmadapt composes with encoders and connectors
    vlm: VLMConfig | None = None  # or: an existing Hugging Face vision-language model
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> {name, **kwargs}
    connectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> {name, **kwargs}
    # An mmadapt checkpoint whose weights start this run. Alone (no llm / vlm), it is the whole model: architecture,
    # encoders, connectors, tokenizer (with its placeholders) and adapters, which keep training unless merged.
    init_from: str | None = None
    merge_adapters: bool = False  # with init_from alone: fold the checkpoint's adapters in first
    # The token each modality's items take in the LLM's text (default <image> / <audio> / <video>); records keep
    # those markers, which become this token at tokenisation. An HF model.vlm uses its processor's own token.
    placeholders: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.placeholders) - {"image", "audio", "video"})
        if unknown:
            raise ValueError(f"model.placeholders: unknown modality {unknown}; valid: image, audio, video")
        if any(not isinstance(t, str) or not t.strip() for t in self.placeholders.values()):
            raise ValueError("model.placeholders: each token must be a non-empty string")
        if self.vlm is not None and self.placeholders:
            raise ValueError("model.placeholders: a model.vlm uses its processor's image token; remove this key")
        if self.llm is None and self.vlm is None and self.init_from is not None:
            if self.encoders or self.connectors or self.placeholders:
                raise ValueError("model.init_from alone brings the checkpoint's encoders, connectors and placeholders; "
                                 "remove model.encoders / model.connectors / model.placeholders (or describe the whole "
                                 "model with model.llm and use init_from for its weights)")
            return
        if self.merge_adapters:
            raise ValueError("model.merge_adapters applies to model.init_from alone (a finished run's adapters)")
        if (self.llm is None) == (self.vlm is None):
            raise ValueError("set exactly one of model.llm (compose encoders + connectors + a causal LM), model.vlm "
                             "(a Hugging Face vision-language checkpoint), or model.init_from alone (a finished run)")
        if self.vlm is not None and (self.encoders or self.connectors):
            raise ValueError("model.vlm brings its own vision tower and projector; remove model.encoders and "
                             "model.connectors")
        if set(self.encoders) != set(self.connectors):
            raise ValueError(
                f"every encoder needs a connector of the same modality: encoders {sorted(self.encoders)}, "
                f"connectors {sorted(self.connectors)}"
            )


@dataclass
class DataConfig:
    # Data files (.json/.jsonl/.parquet/.arrow, a `datasets.save_to_disk` folder) or names in data.dataset_info;
    # several are mixed (data.weights). Records in any layout of data.formatting (mmadapt.data.formats).
    train: str | list[str] | None = None
    eval: str | list[str] | None = None
    formatting: str = "auto"  # record layout: auto (per file, from its keys) | llava | sharegpt | openai | alpaca
    columns: dict[str, str] = field(default_factory=dict)  # a layout's key -> this file's column (LLaMA-Factory style)
    dataset_info: str | None = None  # dataset registry file (.json/.yaml, LLaMA-Factory's dataset_info.json layout)
    weights: dict[str, float] = field(default_factory=dict)  # dataset (name or file) -> weight: x its records in the mix
    media_cache: str | None = None  # embedded media (bytes, base64) are written here as files (~/.cache/mmadapt/media)
    media_root: str | None = None  # relative media paths are resolved here (default: the data file's folder)
    format: Literal["conversations", "text", "preference", "kto"] = "conversations"
    max_length: int = 512
    skip_bad_samples: bool = False
    # a name (chatml, qwen2, qwen3, llama3, gemma, mistral, ...: mmadapt.data.chat_templates), a tokenizer directory,
    # a .jinja file or Jinja source; default: the tokenizer's own, else ChatML
    chat_template: str | None = None
    generate: dict[str, Any] | None = None  # {name: shapes, out: DIR, **kwargs}: generated data written to `out`
    retrieval: dict[str, Any] | None = None  # retrieval-augmented examples (mmadapt.rag.augment)
    feature_cache: str | None = None  # a directory: frozen encoders' features computed once, reused by epochs and stages
    # SFT: a batch's samples packed back to back into rows of at most max_length (no padding between them; each
    # sample attends only to itself: mmadapt.data.packing)
    packing: bool = False

    def __post_init__(self) -> None:
        if self.packing and self.format not in ("conversations", "text"):
            raise ValueError(f"data.packing packs SFT samples; data.format {self.format!r} is not one "
                             "(valid with packing: conversations, text)")
        if self.max_length < 8:
            raise ValueError(f"data.max_length={self.max_length} is too small (at least 8)")
        for name, weight in self.weights.items():
            if not weight > 0:
                raise ValueError(f"data.weights.{name} must be > 0, got {weight}")


@dataclass
class DistributedConfig:
    """`training.distributed`: how `accelerate launch` processes share the model (mapped onto TrainingArguments'
    fsdp / fsdp_config / deepspeed by mmadapt.train.distributed; the launcher sets the process count)."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    sharding: Literal["full_shard", "shard_grad_op"] = "full_shard"  # fsdp: shard params+grads+optim, or grads+optim
    wrap: list[str] | None = None  # fsdp auto-wrap classes (None: the LLM's `_no_split_modules`, its decoder layer)
    cpu_offload: bool = False
    state_dict: Literal["sharded", "full"] = "sharded"  # checkpoint format (the final output is always gathered)
    activation_checkpointing: bool = False
    deepspeed: str | None = None  # path to a DeepSpeed JSON (ZeRO-2/3)

    def __post_init__(self) -> None:
        if self.strategy == "deepspeed" and not self.deepspeed:
            raise ValueError("training.distributed.deepspeed must name a DeepSpeed JSON file when strategy is "
                             "deepspeed (e.g. examples/deepspeed/zero2.json)")
        if self.deepspeed and self.strategy != "deepspeed":
            raise ValueError(f"training.distributed.deepspeed is set but strategy is {self.strategy!r}; "
                             "set strategy: deepspeed or remove the deepspeed key")
        if self.wrap is not None and not self.wrap:
            raise ValueError("training.distributed.wrap must name at least one module class (or be null)")


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    max_steps: int = -1  # overrides epochs when > 0
    batch_size: int = 8
    eval_batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the device supports it
    gradient_checkpointing: bool = False
    train_modules: list[str] = field(default_factory=lambda: ["connectors"])  # encoders | connectors | llm | a module prefix
    # Per-part learning rates (part: encoders | connectors | llm | a parameter-name prefix); the rest use `lr`.
    module_lr: dict[str, float] = field(default_factory=dict)
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=list)
    dataloader_num_workers: int = 0
    # deterministic kernels everywhere (TrainingArguments.full_determinism): GPU runs repeat bit for bit and can be
    # compared across launchers (AdamW turns kernel-order noise in near-zero gradients into full-size steps); slower
    deterministic: bool = False
    # torch intra-op threads for this run (None: torch's default, one per core). Tiny models train faster on 1:
    # their ops are too small to split, and under load a spinning second thread can slow a step 30-fold.
    threads: int | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"training.threads must be >= 1 (or null for torch's default), got {self.threads}")
        for key in ("batch_size", "grad_accum", "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        for part, lr in self.module_lr.items():
            if not lr > 0:
                raise ValueError(f"training.module_lr.{part} must be > 0, got {lr}")


@dataclass
class PeftConfig:
    """Adapters through `peft` (LoRA / DoRA / QLoRA)."""

    method: Literal["lora", "dora"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    rslora: bool = False
    target_modules: list[str] | str = "all-linear"
    apply_to: list[str] = field(default_factory=lambda: ["llm"])  # "llm" and/or "encoders"
    quantization: Literal["none", "4bit", "8bit"] = "none"


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "sft"})
    peft: PeftConfig | None = None
    seed: int = 0
    output_dir: str = "runs/run"
    stages: list[dict[str, Any]] = field(default_factory=list)  # [{name, <section>: partial overrides}]
