"""Options shared by several commands, defined once (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Recipe = Annotated[Optional[Path], typer.Option(
    "--recipe", help="TOML recipe; flags override its values. Default: <workspace>/perfusion.toml if present.")]
DataDir = Annotated[Optional[Path], typer.Argument(
    help="Prepared data folder. Default: <workspace>/data.", show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: inside the workspace).")]
Resume = Annotated[Optional[str], typer.Option(
    "--resume", help="Resume from the latest checkpoint in --out ('latest') or from a checkpoint path.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
MixedPrecision = Annotated[Optional[str], typer.Option("--mixed-precision", help="no, fp16 or bf16.")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps to train for.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Groups per batch and process.")]
BaseModel = Annotated[Optional[str], typer.Option(
    "--base-model", help="Hugging Face id, local folder, or 'tiny' for the bundled CPU backbones.")]
CheckpointEvery = Annotated[Optional[int], typer.Option("--checkpoint-every", help="Steps between checkpoints.")]
KeepLast = Annotated[Optional[int], typer.Option("--keep-last", help="Checkpoints to keep.")]
SkipBadShards = Annotated[Optional[bool], typer.Option(
    "--skip-bad-shards/--no-skip-bad-shards", help="Skip unreadable shards (counted) instead of stopping.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in the output folder.")]
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", help="Micro-batches per optimizer step.")]
ReportTo = Annotated[Optional[str], typer.Option(
    "--report-to", help="none, tensorboard or wandb (trackers through Accelerate; optional extras).")]
NumWorkers = Annotated[Optional[int], typer.Option("--num-workers", help="Data-loader worker processes.")]
Attention = Annotated[Optional[str], typer.Option("--attention", help="sdpa or xformers.")]
Resolution = Annotated[Optional[int], typer.Option("--resolution", help="Image resolution (pixels, square).")]
LrSchedule = Annotated[Optional[str], typer.Option("--lr-schedule", help="constant or cosine (decays to 0).")]
BranchEvery = Annotated[Optional[int], typer.Option(
    "--branch-every", help="Compute the branch every N denoising steps, reusing its output in between.")]
BranchUntil = Annotated[Optional[float], typer.Option(
    "--branch-until", help="Run the branch on the first fraction of the steps only (then the base alone).")]

GroupSize = Annotated[Optional[int], typer.Option("--group-size", help="Candidates per group (K).")]
GradientCheckpointing = Annotated[Optional[bool], typer.Option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    help="Recompute activations in the backward pass (less memory, about a third more time).")]

# the flags train-rm and train-gen share, declared once (``flags.with_flags`` adds them to both commands)
TRAINING = {"group_size": GroupSize, "base_model": BaseModel, "batch_size": BatchSize, "max_steps": MaxSteps, "grad_accum": GradAccum,
            "lr_schedule": LrSchedule, "num_workers": NumWorkers, "mixed_precision": MixedPrecision,
            "gradient_checkpointing": GradientCheckpointing,
            "checkpoint_every": CheckpointEvery, "keep_last": KeepLast, "seed": Seed, "report_to": ReportTo,
            "skip_bad_shards": SkipBadShards}
# the parameters of a training command that set no config field
TRAINING_LOCAL = ("data", "out", "resume", "overwrite", "recipe")
