"""The example files the CLI help and docs name exist and load into the configs they are for."""

from pathlib import Path

from mmadapt.config import from_dict, load, read_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_rag_build_example_is_the_one_the_help_names():
    from mmadapt.cli.rag import add_cli
    from mmadapt.rag.store import RagConfig

    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    help_text = parser._subparsers._group_actions[0].choices["rag"]._subparsers._group_actions[0].choices["build"].format_help()
    assert "examples/rag_build.yaml" in help_text
    config = load(RagConfig, str(EXAMPLES / "rag_build.yaml"), [])
    assert config == RagConfig()  # the example documents the defaults


def test_edit_hparams_examples_load():
    from mmadapt.editing.memit import MemitHParams
    from mmadapt.editing.rome import RomeHParams

    assert from_dict(RomeHParams, read_yaml(EXAMPLES / "edit_rome.yaml")).layer == 17
    memit = from_dict(MemitHParams, read_yaml(EXAMPLES / "edit_memit.yaml"))
    assert memit.layers is None and memit == MemitHParams(stats=memit.stats) and memit.stats.corpus == "corpus.txt"


def test_ft_hparams_example_documents_the_defaults():
    from mmadapt.editing.ft import FTHParams

    assert from_dict(FTHParams, read_yaml(EXAMPLES / "edit_ft.yaml")) == FTHParams()


def test_edit_yaml_example_names_a_method_its_hparams_and_requests():
    import argparse

    from mmadapt.cli.edit import _edit_config
    from mmadapt.editing.memit import MemitHParams

    args = argparse.Namespace(config=str(EXAMPLES / "edit.yaml"), method=None, edits=None, hparams=None)
    _edit_config(args)
    assert args.method == "memit" and args.edits == str(EXAMPLES / "edits.jsonl") and (EXAMPLES / "edits.jsonl").is_file()
    assert from_dict(MemitHParams, args.hparams_data).layers == [2, 3]
