"""How each backbone family makes x_t and its training target from x_0, ε and a time (DESIGN §5, §10).

A noise process is the part of a family the objective, the planner and pre-training share: ``times`` draws
one training time per row (what the predictor is called with), ``noisy`` makes x_t, ``target`` is what the
predictor is trained to output. ``DDPM`` is the U-Nets' (ε or v prediction on a discrete β schedule);
``RectifiedFlow`` the flow-matching transformers' (x_t = (1 − σ)·x_0 + σ·ε, target ε − x_0). A new family
adds a file here and a line in ``noise_process``'s table, nothing in the code that calls it.
"""

from perfusion_cli.noise.ddpm import DDPM
from perfusion_cli.noise.process import NoiseProcess, noise_process
from perfusion_cli.noise.rectified_flow import RectifiedFlow

__all__ = ["DDPM", "NoiseProcess", "RectifiedFlow", "noise_process"]
