"""The names of an mmadapt checkpoint's files and folders, in one place (composed models and HF VLMs share the marker)."""

MODEL_CONFIG_FILE = "mmadapt_model.yaml"  # marks an mmadapt checkpoint; holds its ModelConfig
MULTIMODAL_WEIGHTS = "multimodal.safetensors"  # encoders + connectors of a composed model
LLM_DIR = "llm"  # the causal LM in Hugging Face's own layout
ADAPTER_DIR = "llm_adapter"  # a peft adapter on that LLM, in peft's own layout
