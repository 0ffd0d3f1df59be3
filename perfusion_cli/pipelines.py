"""Which pipeline reads a ``train-gen`` run: ``PerFusionPipeline`` for a U-Net's branch, ``FlowPerFusionPipeline``
for a flow transformer's joint-attention adapter. Both take the same call; ``generate``, ``eval gen``, ``bench``,
``serve`` and ``perfusion_cli.api.load_generator`` open runs here; ``train-gen --online`` draws its groups with the
pipeline of its frozen parts (``sampling_pipeline``)."""

from __future__ import annotations

from pathlib import Path

import torch

from perfusion_cli.flow_pipeline import FlowPerFusionPipeline, flow_pipeline
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.joint_adapter import JointAttentionAdapter
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.runs import model_folder


def load_pipeline(run_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A generator run (or its ``model/`` folder) as the pipeline of its base's family."""
    folder = model_folder(run_dir, "generator")
    branch = load_branch(folder, dtype)
    if isinstance(branch, JointAttentionAdapter):
        return flow_pipeline(branch, folder, device, dtype)
    return PerFusionPipeline.from_branch(branch, folder, device, dtype)


def sampling_pipeline(frozen, branch):
    """A training run's frozen parts and branch as the pipeline of their family, for drawing on-policy groups."""
    family = FlowPerFusionPipeline if isinstance(branch, JointAttentionAdapter) else PerFusionPipeline
    return family.for_sampling(frozen, branch)
