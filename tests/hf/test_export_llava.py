"""`mmadapt export --format hf` of composed models: LLaVA directories plain transformers loads, with equal logits."""

import json

import pytest
import torch
from PIL import Image

from mmadapt.errors import ConfigError

TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "image_size": 16, "patch_size": 8}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Tiny CLIP and SigLIP vision towers with their image processors, as `hf_vision` loads them."""
    import transformers as tf

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**TOWER)).save_pretrained(root / "clip")
    clip_images = tf.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    clip_images.save_pretrained(root / "clip")
    tf.SiglipVisionModel(tf.SiglipVisionConfig(**TOWER)).save_pretrained(root / "siglip")
    tf.SiglipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "siglip")
    return root


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    """A two-turn conversation about an image, and a text-only one, in our LLaVA format."""
    root = tmp_path_factory.mktemp("conv")
    Image.new("RGB", (20, 28), (255, 0, 0)).save(root / "red.png")
    with_image = {"image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the shape ?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "where is it ?"}, {"from": "gpt", "value": "top left"}]}
    text_only = {"conversations": [{"from": "human", "value": "hello world"}, {"from": "gpt", "value": "the dog ."}]}
    (root / "data.jsonl").write_text(json.dumps(with_image) + "\n" + json.dumps(text_only) + "\n")
    return root, [with_image, text_only]


def compose(tokenizer_dir, encoders, connectors, llm="llama", seed=0):
    from mmadapt.config import ModelConfig, from_dict
    from mmadapt.model import MultimodalLM
    from mmadapt.quickstart.tiny import tiny_llm_config

    torch.manual_seed(seed)
    spec = llm if isinstance(llm, dict) else tiny_llm_config(llm, hidden=32, heads=2)
    config = from_dict(ModelConfig, {"llm": {"config": spec,
                                             "tokenizer": str(tokenizer_dir)},
                                     "encoders": encoders, "connectors": connectors})
    model = MultimodalLM.from_config(config)
    with torch.no_grad():  # random biases too, so a dropped or misplaced bias shows in the logits
        for p in model.connectors.parameters():
            p.normal_(0, 0.2)
    return model


def llava_model(tokenizer_dir, towers, tower="clip", llm="llama", **options):
    return compose(tokenizer_dir, {"image": {"name": "hf_vision", "name_or_path": str(towers / tower), **options}},
                   {"image": {"name": "mlp", "depth": 2}}, llm)


def mmadapt_logits(model, conversations):
    """Logits of `model` through mmadapt's own data path (ExampleBuilder + collator), one per conversation."""
    from mmadapt.config import DataConfig
    from mmadapt.data.collator import ConversationCollator
    from mmadapt.data.conversations import ExampleBuilder

    root, records = conversations
    builder = ExampleBuilder(model.tokenisation_spec(), DataConfig(max_length=256), root / "data.jsonl")
    model.eval()
    result = []
    for i, record in enumerate(records):
        batch = ConversationCollator(model.tokenisation_spec())(builder.build([(f"line {i}", record)]))
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           media=batch.get("media")).logits
        result.append((batch["input_ids"], logits))
    return result


def assert_same_logits(expected, export_dir, conversations, tolerance=1e-5):
    """`expected` (mmadapt_logits) vs the export's own processor + HF forward, conversation by conversation."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmadapt.data.templates import to_messages
    from mmadapt.hf.processing import to_hf_messages

    root, records = conversations
    hf = AutoModelForImageTextToText.from_pretrained(str(export_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(export_dir))
    assert type(hf).__name__ == "LlavaForConditionalGeneration" and type(processor).__name__ == "LlavaProcessor"
    for (ids, ours), record in zip(expected, records):
        text = processor.apply_chat_template(to_hf_messages(to_messages(record["conversations"], "test")))
        images = [Image.open(root / record["image"]).convert("RGB")] if "image" in record else None
        inputs = processor(text=[text], images=images, return_tensors="pt")
        assert inputs["input_ids"].tolist() == ids.tolist()  # same rendering, same image-token expansion
        with torch.no_grad():
            theirs = hf(**inputs).logits
        assert (ours - theirs).abs().max().item() <= tolerance, record


@pytest.mark.parametrize("tower, llm, options", [
    ("clip", "llama", {"layer": -2}),  # LLaVA-1.5: penultimate layer, class token dropped
    ("clip", "gpt2", {"layer": 0, "drop_cls": False}),  # tied embeddings under other names; CLS kept ("full")
    ("siglip", "mistral", {}),  # no class token: nothing to drop
])
def test_cli_export_loads_in_plain_transformers_with_equal_logits(tokenizer_dir, towers, conversations, tmp_path,
                                                                  tower, llm, options):
    from mmadapt.cli import main
    from mmadapt.lineage import read_manifest

    model = llava_model(tokenizer_dir, towers, tower, llm, **options)
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_feature_layer"] == {-2: -2, 0: 1, -1: -1}[options.get("layer", -1)]
    assert config["vision_feature_select_strategy"] == ("default" if tower == "clip" and options.get("drop_cls", True)
                                                        else "full")
    manifest = read_manifest(tmp_path / "hf")
    assert manifest["kind"] == "export:hf" and manifest["parents"], manifest
    assert_same_logits(mmadapt_logits(model, conversations), tmp_path / "hf", conversations)


def test_lora_adapters_are_folded_and_the_export_runs_without_mmadapt(tokenizer_dir, towers, conversations,
                                                                       tmp_path):
    import subprocess
    import sys

    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from mmadapt.hf.export_llava import export_llava

    model = llava_model(tokenizer_dir, towers, layer=-2)
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with model.llm.disable_adapter():
        plain = mmadapt_logits(model, conversations)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter change the outputs
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapted = mmadapt_logits(model, conversations)
    assert (adapted[0][1] - plain[0][1]).abs().max() > 1e-2  # the adapter matters
    export_llava(model, tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if "lora" in k or "base_layer" in k]
    assert_same_logits(adapted, tmp_path / "hf", conversations)  # folded: the export computes the adapted model

    # transformers alone (mmadapt made unimportable) loads the export and generates what mmadapt generates
    root, records = conversations
    script = f"""
import sys; sys.modules["mmadapt"] = None
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
processor = AutoProcessor.from_pretrained({str(tmp_path / "hf")!r})
model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / "hf")!r})
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "what colour ?"}}]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[Image.open({str(root / records[0]["image"])!r})], return_tensors="pt")
print(inputs["input_ids"][0].tolist())
print(model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    prompt_ids, generated = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    pixels = model.encoders["image"].preprocess(Image.open(root / records[0]["image"]))[None]
    ids = torch.tensor([prompt_ids])
    ours = model.generate(ids, torch.ones_like(ids), media={"image": pixels}, max_new_tokens=4,
                          do_sample=False)
    assert ours[0].tolist() == generated


QFORMER = {"name": "qformer", "num_query_tokens": 4, "num_layers": 1, "hidden_size": 32, "num_heads": 2,
           "intermediate_size": 64}
RESAMPLER = {"name": "resampler", "num_latents": 4, "depth": 1, "num_heads": 2, "head_dim": 16, "num_kv_heads": 1}


@pytest.mark.parametrize("connector, encoders, named", [
    (QFORMER, None, r"model\.connectors\.image: 'qformer' \(QFormer\)"),
    (RESAMPLER, None, r"model\.connectors\.image: 'resampler' \(PerceiverResampler\)"),
    ({"name": "mlp", "depth": 3}, None, r"model\.connectors\.image\.depth: 3"),
    ({"name": "mlp", "depth": 2, "pool": "avg"}, None, r"model\.connectors\.image\.pool: 'avg'"),
    ({"name": "linear"}, None, r"model\.connectors\.image: 'linear'"),
    ({"name": "mlp", "depth": 2}, {"audio": {"name": "tiny_audio", "width": 32, "depth": 1}},
     r"model\.encoders\.audio: 'tiny_audio' \(audio encoder\); LLaVA takes images only"),
    ({"name": "mlp", "depth": 2}, {"video": {"name": "video", "num_frames": 2, "frame_encoder": "clip tower"}},
     r"model\.encoders\.video: 'video' \(video encoder\)"),
])
def test_parts_without_an_hf_equivalent_are_refused_by_name(tokenizer_dir, towers, tmp_path, connector, encoders,
                                                            named):
    from mmadapt.hf.export_llava import export_llava

    clip = {"name": "hf_vision", "name_or_path": str(towers / "clip")}
    encoders = {"image": clip, **(encoders or {})}
    if "video" in encoders:  # its frames go through the same tower
        encoders["video"] = {**encoders["video"], "frame_encoder": clip}
    model = compose(tokenizer_dir, encoders, {m: connector for m in encoders})
    with pytest.raises(ConfigError, match=named) as error:
        export_llava(model, tmp_path / "hf")
    assert "mmadapt export --model DIR --out OUT" in str(error.value) and "--merge-adapters" in str(error.value)
    assert not (tmp_path / "hf").exists()


def test_cli_refusal_exits_2_and_writes_nothing(tokenizer_dir, tmp_path, capsys):
    from mmadapt.cli import main
    from mmadapt.quickstart.tiny import tiny_vit_encoder

    model = compose(tokenizer_dir, {"image": tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)},
                    {"image": QFORMER})
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "model.encoders.image: 'timm' tower" in err and "'qformer'" in err, err
    assert not (tmp_path / "hf").exists()
    # the mmadapt layout named in the message works for the same model
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "mm")]) == 0


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl", "idefics3"])
def test_cli_hf_format_writes_an_hf_vlm_checkpoint_back_in_its_own_format(tmp_path, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmadapt.cli import main
    from mmadapt.hf.tiny import save_tiny_vlm

    source = save_tiny_vlm(family, tmp_path / "source")
    assert main(["export", "--model", str(source), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    before, after = (AutoModelForImageTextToText.from_pretrained(str(d)) for d in (source, tmp_path / "hf"))
    assert type(after) is type(before)
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    processors = [AutoProcessor.from_pretrained(str(d)) for d in (source, tmp_path / "hf")]
    assert type(processors[0]) is type(processors[1])
    assert processors[0].chat_template == processors[1].chat_template


def test_an_existing_output_is_replaced_only_if_it_is_an_earlier_export_and_overwrite_is_set(tokenizer_dir, towers,
                                                                                              tmp_path):
    from mmadapt.hf.export_llava import export_llava

    model = llava_model(tokenizer_dir, towers)
    export_llava(model, tmp_path / "hf")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        export_llava(model, tmp_path / "hf")
    export_llava(model, tmp_path / "hf", overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not mmadapt's")
    with pytest.raises(ConfigError, match="never deletes what it did not write"):
        export_llava(model, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "not mmadapt's"


def test_an_llm_whose_head_llava_cannot_reproduce_is_refused_before_writing(tokenizer_dir, towers, tmp_path):
    from mmadapt.hf.export_llava import export_llava

    # Gemma-2 soft-caps its logits in the causal-LM class, which LLaVA's plain lm_head does not do
    gemma2 = {"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "final_logit_softcapping": 0.5}
    model = compose(tokenizer_dir, {"image": {"name": "hf_vision", "name_or_path": str(towers / "clip")}},
                    {"image": {"name": "mlp", "depth": 2}}, gemma2)
    with pytest.raises(ConfigError, match="does not reproduce this model's logits.*Gemma2ForCausalLM"):
        export_llava(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
