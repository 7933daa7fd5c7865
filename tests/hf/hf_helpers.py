"""Run configs for the HF vision-language tests."""


def run_config(llava_dir, colour_data, out, **training):
    base = {"max_steps": 2, "batch_size": 4, "lr": 0.01, "logging_steps": 1, "train_modules": ["connectors"]}
    return {"seed": 0, "output_dir": str(out), "model": {"vlm": {"name_or_path": str(llava_dir)}},
            "data": {"train": str(colour_data / "train.jsonl")}, "training": {**base, **training}}


