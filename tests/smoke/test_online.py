"""train-gen --online: on-policy groups ranked by a reward, the reward-hacking guard, exact resume."""

import json
import shutil
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from perfusion_cli.evaluation.report import training_curves
from perfusion_cli.online.groups import OnlineObjective
from perfusion_cli.training.checkpoint import find_checkpoint, load_checkpoint
from perfusion_cli.online.task import train_generator
from perfusion_cli.training.loop import RewardHackingStopped
from tests.helpers import read_jsonl, tiny_config
from tests.smoke.test_crash_safety import _command, _env, _losses, _run, _wait_for, _weights, workspace_recipe


class RednessReward:
    """Pays for red whatever the merchant and the prompt: a reward a policy can game."""

    def score(self, prompts, images, features, valid=None):
        red, green, blue = images.float().unbind(2)  # [B, K, H, W] each
        return 10 * (red - (green + blue) / 2).mean(dim=(-2, -1))


def test_the_logged_share_of_calls_is_spread_evenly():
    objective = OnlineObjective(None, None, 0.25)
    assert [call for call in range(1, 13) if objective.logged(call)] == [4, 8, 12]
    assert not any(OnlineObjective(None, None, 0.0).logged(call) for call in range(1, 100))
    assert all(OnlineObjective(None, None, 1.0).logged(call) for call in range(1, 100))
    assert sum(OnlineObjective(None, None, 0.3).logged(call) for call in range(1, 101)) == 30
    # a warm-up of 5 calls on the logs, then the same spread counted from its end
    warm = OnlineObjective(None, None, 0.25, warmup=5)
    assert [call for call in range(1, 18) if warm.logged(call)] == [1, 2, 3, 4, 5, 9, 13, 17]


def test_drawn_groups_train_with_their_own_loss():
    """``online_beta`` / ``online_kl_weight`` / ``online_sft_weight``: the on-policy steps' own loss."""
    def loss(value):
        return lambda policy, groups: (torch.tensor(value), {"groups": groups})

    objective = OnlineObjective(lambda policy, batch: (f"drawn for {batch}", {"reward": 0.5}), loss(1.0), 0.5,
                                drawn=loss(2.0))
    calls = [objective(None, "batch") for _ in range(4)]
    assert [(value.item(), logs["groups"], logs["online"]) for value, logs in calls] == [
        (2.0, "drawn for batch", 1.0), (1.0, "batch", 0.0), (2.0, "drawn for batch", 1.0), (1.0, "batch", 0.0)]
    same = OnlineObjective(lambda policy, batch: ("drawn", {}), loss(1.0), 0.0)
    assert same(None, "batch")[0].item() == 1.0  # without its own settings a drawn group takes the run's loss


@pytest.mark.slow
def test_online_run_killed_then_resumed_repeats_the_uninterrupted_one(tmp_path, market):
    """Weights, losses, rewards and the guard's probes step for step: the sampler's draws, the mix of logged
    steps and the guard's history are all in the checkpoint."""
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    workspace_recipe(tmp_path / "perfusion.toml")
    _run(tmp_path, "train-rm")  # the reward: <workspace>/runs/rm
    common = ["--online", "--online-mix", "0.3", "--sample-steps", "3", "--sample-eta", "0.5",  # noise in each step
              "--online-beta", "2000", "--online-kl-weight", "7",  # the drawn steps' own loss (its state: none)
              "--probe-every", "3", "--probe-pairs", "3",
              "--max-steps", "8", "--checkpoint-every", "4"]
    _run(tmp_path, "train-gen", "--out", tmp_path / "straight", *common)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tmp_path, "train-gen", "--out", killed, *common), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = _wait_for(lambda: (killed / "checkpoints" / "step-00000004").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached and not (killed / "run.json").exists()
    _run(tmp_path, "train-gen", "--out", killed, *common, "--resume", "latest")

    def rows(run):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in read_jsonl(run / "metrics.jsonl")]

    straight = rows(tmp_path / "straight")
    assert rows(killed) == straight
    assert _losses(killed) == _losses(tmp_path / "straight")
    assert [row["online"] for row in straight if "loss" in row] == [1, 1, 1, 0, 1, 1, 0, 1]  # mix 0.3: calls 4 and 7
    drawn = [row for row in straight if row.get("online") == 1]
    assert all(row["kl_term"] == pytest.approx(7 * row["kl"], rel=1e-4, abs=1e-12) for row in drawn)  # κ 7 on draws
    assert [row["step"] for row in straight if row.get("split") == "probe"] == [0, 3, 6, 8]
    assert all("reward" in row and "oracle" in row and "clip" in row for row in straight if row.get("split"))
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[key], b[key]) for key in a)
    plotted = training_curves(tmp_path / "report", {"generator": killed})  # what eval gen --report shows
    assert {"curves/generator-reward-reward_best.png", "curves/generator-kl.png",
            "curves/generator-sample_seconds-loss_seconds.png", "curves/generator-probe-reward-oracle-judge_reward.png",
            "curves/generator-probe-clip.png"} <= set(plotted)


@pytest.mark.slow
def test_the_guard_catches_a_gamed_reward_and_stops_with_the_last_good_weights(tmp_path, market):
    data_dir, _ = market
    config = tiny_config("train-gen", online=True, batch_size=4, max_steps=40, lr=1e-2, kl_weight=0.0,
                         sample_steps=4, probe_every=5, probe_pairs=8, stop_on_hacking=True)
    with pytest.raises(RewardHackingStopped, match=r"stopped at step (\d+) by --stop-on-hacking: reward_hacking: "
                                                   r"the reward climbed .* while the judge \w+ fell") as stopped:
        train_generator(config, data_dir, tmp_path / "gen", reward=RednessReward())
    run = tmp_path / "gen"
    summary = json.loads((run / "run.json").read_text())
    stop = summary["stopped"]
    probes = {row["step"]: row for row in read_jsonl(run / "metrics.jsonl") if row.get("split") == "probe"}
    last = probes[stop["step"]]
    assert last["hacking"] and not any(row["hacking"] for step, row in probes.items() if step < stop["step"])
    assert last["reward"] > probes[0]["reward"], "the gamed reward climbed"
    judge = stopped.value.args[0].split("while the judge ")[1].split()[0]
    assert last[judge] < max(row[judge] for step, row in probes.items() if step < stop["step"]), "its judge fell"
    # model/ holds the weights of the last probe that passed, which is also the last checkpoint written
    good = stop["weights_from_step"]
    assert good == max(step for step in probes if step < stop["step"])
    checkpoint = load_checkpoint(find_checkpoint(run, "latest"), 0)
    assert checkpoint.step == good
    saved = {key: value for file in sorted((run / "model").glob("*.safetensors"))
             for key, value in load_file(str(file)).items()}
    assert saved.keys() == checkpoint.model.keys()
    assert all(torch.equal(saved[key], checkpoint.model[key]) for key in saved)


def test_online_without_a_reward_model_says_what_to_train(tmp_path, market):
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    workspace_recipe(tmp_path / "perfusion.toml")
    result = subprocess.run(_command(tmp_path, "train-gen", "--online"), capture_output=True, text=True, env=_env(),
                            timeout=300)
    assert result.returncode == 1
    assert "runs/rm" in result.stderr and "train-rm" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
