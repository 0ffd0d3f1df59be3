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
