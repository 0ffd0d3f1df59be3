"""``perfusion serve`` on generators trained on other backbones than the tiny SD one — the tiny SDXL base and FLUX.1's
layout at toy widths: candidates made and a pick recorded, as on SD (the API does not know the backbone; this holds
it to that)."""

import shutil

import httpx
import pytest
import torch

from tests.helpers import TOY_FLOW, read_jsonl, tiny_config, tiny_recipe, write_recipe
from tests.serve.conftest import Server


def _base(backbone: str, tmp_path) -> str:
    if backbone == "tiny-sdxl":
        return backbone
    write, hub_id, _, overrides = TOY_FLOW[backbone]
    return str(write(hub_id, tmp_path / backbone, overrides, dtype=torch.float32).resolve())


@pytest.mark.parametrize("backbone", ["tiny-sdxl", "flux"])
def test_serve_makes_candidates_and_records_a_pick_on_another_backbone(backbone, serve_workspace, tmp_path):
    from perfusion_cli.training.gen import train_generator

    base = _base(backbone, tmp_path)
    workspace = tmp_path / "ws"
    shutil.copytree(serve_workspace / "data", workspace / "data")
    shutil.copytree(serve_workspace / "runs" / "rm", workspace / "runs" / "rm")
    write_recipe(workspace / "perfusion.toml", tiny_recipe(train_gen={"base_model": base}))
    train_generator(tiny_config("train-gen", base_model=base, stored_latents=False), workspace / "data",
                    workspace / "runs" / "gen")
    with Server(workspace, tmp_path / "logs") as server:
        info = httpx.get(server.url("/v1/info")).json()
        assert info["base_model"] == base, info
        answer = httpx.post(server.url("/v1/generate"), json={"merchant_id": "102", "prompt": "linen dress", "n": 2},
                            timeout=120)
        assert answer.status_code == 200, answer.text
        ids = [c["id"] for c in answer.json()["candidates"]]
        assert len(ids) == 2 and all(httpx.get(server.url(c["url"])).status_code == 200
                                     for c in answer.json()["candidates"])
        body = {"session_id": f"{backbone}-1", "merchant_id": "102", "prompt": "linen dress", "candidates": ids,
                "selected": [ids[1]]}
        recorded = httpx.post(server.url("/v1/sessions"), json=body, timeout=30)
        assert recorded.status_code == 200 and recorded.json()["recorded"] is True, recorded.text
    [line] = read_jsonl(tmp_path / "logs" / "sessions.jsonl")
    assert [c["selected"] for c in line["candidates"]] == [False, True]
