"""What ``train-gen --online`` changes in the generator's training task: its loss draws and ranks on-policy
groups, a guard probes between steps, and the checkpoint keeps both one's state. ``training.gen`` calls
``make_online`` when the config is online; ``train_generator`` here is that trainer with it plugged in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.manifest import Manifest
from perfusion_cli.errors import CheckpointError
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.online.groups import OnlineGroups, OnlineObjective
from perfusion_cli.online.hacking_guard import build_guard
from perfusion_cli.pipelines import sampling_pipeline
from perfusion_cli.training import gen
from perfusion_cli.training.loop import TrainTask


def make_online(task: TrainTask, config: GenTrainConfig, frozen, branch, reward, manifest: Manifest,
                accelerator) -> None:
    """Turn the offline task into the online one: the loss, the guard and their checkpoint state. ``frozen`` (a
    U-Net's or a flow transformer's parts) and the branch make the pipeline that draws the groups."""
    pipeline = sampling_pipeline(frozen, branch)
    groups = OnlineGroups(pipeline, reward, config, frozen.text)
    own = {key: value for key, value in (("beta", config.online_beta), ("kl_weight", config.online_kl_weight),
                                         ("sft_weight", config.online_sft_weight)) if value is not None}
    drawn = GroupDPOObjective(frozen, replace(config, **own), None, accelerator.autocast) if own else None
    online = OnlineObjective(groups, GroupDPOObjective(frozen, config, None, accelerator.autocast), config.online_mix,
                             accelerator.unwrap_model, warmup=config.online_warmup * config.grad_accum, drawn=drawn)
    guard = build_guard(config, pipeline, branch, reward, manifest, accelerator.device)

    def load(state: dict) -> None:
        if "online" not in state or (guard is not None and "guard" not in state):
            raise CheckpointError("the checkpoint is not from an online run with this guard: resume with the "
                                  "settings the run started with")
        online.load_state(state["online"])
        if guard is not None:
            guard.load_state(state["guard"])

    task.loss, task.guard, task.stop_on_hacking = online, guard, config.stop_on_hacking
    task.extra_state = lambda: {"online": online.state(), **({"guard": guard.state()} if guard else {})}
    task.load_extra_state = load


def train_generator(config: GenTrainConfig, data_dir: Path, run_dir: Path, **options) -> dict:
    """``training.gen.train_generator`` able to train online runs (what ``perfusion train-gen`` calls)."""
    return gen.train_generator(config, data_dir, run_dir, online=make_online, **options)
