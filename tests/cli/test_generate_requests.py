"""``perfusion generate --requests FILE.jsonl``: many merchants' requests, the pipeline loaded once and the
requests batched across merchants, one folder per request, the same images as one request at a time."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from perfusion_cli.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(trained_workspace):
    return trained_workspace


def _invoke(workspace, *args):
    result = runner.invoke(app, ["--workdir", str(workspace), *map(str, args)])
    return result, " ".join(result.output.split())


def _pixels(folder):
    return [np.asarray(Image.open(path), dtype=np.int16) for path in sorted(folder.glob("*.png"))]


def test_requests_are_batched_across_merchants_and_match_one_at_a_time(workspace, tmp_path):
    requests = [{"merchant": "102", "prompt": "linen dress", "n": 2, "seed": 3},
                {"merchant": "103", "prompt": "wool hoodie", "n": 1, "seed": 9},
                {"merchant": "104", "prompt": "linen dress"}]  # n and seed from the recipe (2 and 0)
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests) + "\n")
    result, text = _invoke(workspace, "generate", "--requests", tmp_path / "requests.jsonl", "--out", tmp_path / "many")
    assert result.exit_code == 0, text
    folders = [tmp_path / "many" / "102" / "linen-dress-seed3", tmp_path / "many" / "103" / "wool-hoodie-seed9",
               tmp_path / "many" / "104" / "linen-dress-seed0"]
    for folder, request, count in zip(folders, requests, (2, 1, 2)):
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["merchant"] == request["merchant"] and metadata["prompt"] == request["prompt"]
        assert [image["seed"] for image in metadata["images"]] == [request.get("seed", 0) + i for i in range(count)]
        assert len(_pixels(folder)) == count
    for folder, request in zip(folders, requests):
        args = ["--merchant", request["merchant"], request["prompt"], "--out", tmp_path / "one"]
        args += ["--n", request["n"], "--seed", request["seed"]] if "n" in request else []
        result, text = _invoke(workspace, "generate", *args)
        assert result.exit_code == 0, text
        alone = tmp_path / "one" / folder.relative_to(tmp_path / "many")
        # the batch computes the same samples; batched kernels may round differently by a grey level
        assert all(np.abs(a - b).max() <= 2 for a, b in zip(_pixels(folder), _pixels(alone)))


@pytest.mark.parametrize("line, message", [
    ('{"merchant": "102"}', 'requests.jsonl line 2: expected {"merchant", "prompt", "n"?, "seed"?}'),
    ('{"merchant": "102", "prompt": "linen dress", "n": 0}', "requests.jsonl line 2: n must be in 1..256, got 0"),
    ('{"merchant": "102", "prompt": " ", "n": 1}', "requests.jsonl line 2: the prompt must not be empty"),
    ('{"merchant": "102", "prompt": "x", "seed": 4294967295, "n": 2}',
     "requests.jsonl line 2: seed must be in 0..4294967294 so that the last image's seed (seed + n − 1) stays ≤ "
     "4294967295, got 4294967295"),
    ('{"merchant": NaN, "prompt": "x"}', "requests.jsonl line 2: field 'merchant' is nan, not an id"),
    ('{"merchant": "102", "prompt": "x \\ud800"}', "line 2: string 'x \\ud800' holds a lone surrogate"),
    ('[1, 2]', "requests.jsonl line 2: expected"),
    ('{"merchant": "nobody", "prompt": "linen dress"}', "unknown merchant 'nobody'"),
])
def test_a_bad_request_line_is_one_error_and_nothing_is_generated(workspace, tmp_path, line, message):
    good = json.dumps({"merchant": "102", "prompt": "linen dress"})
    (tmp_path / "requests.jsonl").write_text(good + "\n" + line + "\n")
    result, text = _invoke(workspace, "generate", "--requests", tmp_path / "requests.jsonl", "--out", tmp_path / "o")
    assert result.exit_code == 1 and message in text and "Traceback" not in text, text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.png"))


def test_merchant_and_requests_are_one_or_the_other(workspace, tmp_path):
    (tmp_path / "r.jsonl").write_text('{"merchant": "102", "prompt": "linen dress"}\n')
    for args in (["--merchant", "102", "linen dress", "--requests", tmp_path / "r.jsonl"], ["linen dress"], []):
        result, text = _invoke(workspace, "generate", *args)
        assert result.exit_code in (1, 2) and 'give --merchant ID "PROMPT", or --requests FILE.jsonl' in text, text
