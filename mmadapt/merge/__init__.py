"""Model merging: tensor methods (methods.py), streamed safetensors I/O (lazy.py), LoRA (lora.py), the run (merge.py)."""
