"""Hostile input at every surface a user reaches, each with the exact message."""

import tarfile

import pytest
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.config import load_recipe
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.errors import ConfigError, DataError
from perfusion_cli.models.backbones import tokenize
from perfusion_cli.models.tiny import build_tokenizer
from perfusion_cli.training.rm import train_reward_model
from tests.helpers import many_sessions, prepare_logs, read_jsonl, session, tiny_config, tiny_recipe, write_logs, \
    write_recipe

runner = CliRunner()


@pytest.mark.parametrize("text, message", [
    ("[trian-rm]\nlr = 1\n", r"unknown section \[trian-rm\] \(known: synthetic, prepare, train-rm"),
    ("[train-rm]\nlrr = 1\n", r"\[train-rm\]: unknown key 'lrr' \(known: augment_flip, backbone_lr, base_model"),
    ("[train-rm]\nbatch_size = \"16\"\n", r"\[train-rm\]: key 'batch_size' must be an integer, got '16'"),
    ("[train-rm]\nloss = \"ce\"\n", r"key 'loss' must be one of 'pl', 'bt', got 'ce'"),
    ("[train-rm]\nmerchant = 3\n", r"key 'merchant' must be a table"),
    ("[train-rm.merchant]\nmlp_dims = [\"a\"]\n", r"key 'mlp_dims' must be an integer, got 'a'"),
    ("[train-gen]\nbeta = true\n", r"key 'beta' must be a number, got True"),
    ("[train-rm\nlr = 1\n", r"is not valid TOML"),
    ("lr = 1\n", r"unknown section \[lr\]"),
])
def test_bad_recipes_name_the_key(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_bad_recipe_through_the_cli_is_one_line(tmp_path):
    (tmp_path / "r.toml").write_text("[train-rm]\nbatch_size = -1.5\n")
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", "--synthetic", "--recipe",
                                 str(tmp_path / "r.toml")])
    assert result.exit_code == 1
    assert result.output.startswith("error: recipe ") and "key 'batch_size' must be an integer, got -1.5" in result.output
    assert len(result.output.strip().splitlines()) <= 3 and "Traceback" not in result.output
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", "--synthetic", "--recipe", "nope.toml"])
    assert result.exit_code == 1 and "recipe not found: nope.toml" in result.output


def _split_shards(market, tmp_path):
    data_dir, _ = market
    manifest = prepare_logs(data_dir / "raw", tmp_path / "data", shard_size=10)
    return tmp_path / "data", manifest.raw["splits"]["train"]["shards"]


def test_a_truncated_shard_stops_training_with_its_name_or_is_skipped(market, tmp_path):
    data, shards = _split_shards(market, tmp_path)
    victim = data / "shards" / shards[1]["name"]
    victim.write_bytes(victim.read_bytes()[:1000])
    write_recipe(tmp_path / "perfusion.toml", tiny_recipe(train_rm={"max_steps": 1, "eval_every": None}))
    result = runner.invoke(app, ["--workdir", str(tmp_path), "train-rm"])
    assert result.exit_code == 1
    assert f"error: shard {victim} has 1000 bytes, the manifest says {shards[1]['bytes']}: it is truncated" \
           in " ".join(result.output.split())
    result = runner.invoke(app, ["--workdir", str(tmp_path), "train-rm", "--overwrite", "--skip-bad-shards"])
    assert result.exit_code == 0, result.output


def test_a_shard_with_damaged_image_bytes_is_named(market, tmp_path):
    data, shards = _split_shards(market, tmp_path)
    victim = data / "shards" / shards[0]["name"]
    with tarfile.open(victim) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".png"))
    raw = bytearray(victim.read_bytes())
    raw[member.offset_data:member.offset_data + member.size] = b"\0" * member.size  # same size, garbage image
    victim.write_bytes(bytes(raw))
    spec = StreamSpec(data, "train", 4, 5, 16)
    with pytest.raises(DataError, match=rf"sample r\d+ in {victim} cannot be decoded .* pass --skip-bad-shards"):
        list(eval_batches(spec))
    kept = sum(len(b) for b in eval_batches(StreamSpec(data, "train", 4, 5, 16, skip_bad_shards=True)))
    assert kept == sum(s["groups"] for s in shards) - 1


def test_prompts_over_the_tokenizer_length_are_truncated_and_counted(tmp_path):
    tokenizer = build_tokenizer()
    long = "a " * 40 + "linen dress"
    ids, mask, truncated = tokenize(tokenizer, ["linen dress", long, long])
    assert truncated == 2 and ids.shape == (3, tokenizer.model_max_length)
    rows = [session(f"s{i}", "m1", prompt=long, timestamp=i) for i in range(12)]
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}], rows)
    prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    summary = train_reward_model(tiny_config("train-rm", eval_every=None), tmp_path / "data", tmp_path / "rm")
    assert summary["final"]["truncated_prompts"] == 8


def test_non_utf8_merchant_rows_are_quarantined(tmp_path):
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}, b"{\"merchant_id\": \"\xff\"}"],
                      many_sessions("m1", 3))
    prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    rows = read_jsonl(tmp_path / "data" / "quarantine.jsonl")
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [("merchants.jsonl", 2, "invalid_utf8")]
