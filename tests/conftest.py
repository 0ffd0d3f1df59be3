import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def market(tmp_path_factory):
    """A prepared tiny synthetic marketplace shared by read-only tests: (data_dir, manifest)."""
    from tests.helpers import tiny_market

    out = tmp_path_factory.mktemp("market")
    manifest = tiny_market(out, merchants=8, sessions=12)
    return out, manifest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialized tiny CLIP saved in Hugging Face format (no pre-training needed)."""
    from perfusion_cli.models.tiny import build_tiny_clip, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_tokenizer()
    build_tiny_clip(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
