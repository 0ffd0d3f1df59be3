"""The exported IP-Adapter keys on the real layouts, offline: SD 1.5's 16 and SDXL's 70 cross-attention layers,
named in the order diffusers' loader reads them, with the shapes its processors take (the tiny bases' images are
compared pixel for pixel in tests/smoke/test_export.py)."""

import pytest
import torch

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.export import ip_adapter_tensors
from perfusion_cli.models.adapter import MerchantAdapter
from perfusion_cli.models.architectures import pipeline_class, unet_layout
from perfusion_cli.plan import planning_vocab

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def _exported(base: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    with torch.device("meta"):
        unet = unet_layout(base)
        adapter = MerchantAdapter.from_unet(unet, planning_vocab(10), MerchantEncoderConfig(), base_model=base)
    return unet, ip_adapter_tensors(adapter)


@pytest.mark.parametrize("base, layers, pipeline", [(SD15, 16, "StableDiffusionPipeline"),
                                                    (SDXL, 70, "StableDiffusionXLPipeline")])
def test_one_key_pair_per_cross_attention_layer_numbered_as_diffusers_numbers_them(base, layers, pipeline):
    _, tensors = _exported(base)
    assert {name for name in tensors if name.startswith("image_proj.")} == {
        "image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}
    numbers = sorted({int(name.split(".")[1]) for name in tensors if name.startswith("ip_adapter.")})
    assert numbers == list(range(1, 2 * layers, 2))  # diffusers' key_id: 1, 3, 5, … over cross-attention layers
    assert pipeline_class(base) == pipeline


def test_diffusers_own_converter_takes_the_sd15_export_on_the_real_layout():
    unet, tensors = _exported(SD15)
    state = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in tensors.items():
        part, key = name.split(".", 1)
        state[part][key] = torch.zeros(tensor.shape)  # the shapes, on the CPU
    processors = unet._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)  # loads or raises
    loaded = [p for name, p in processors.items() if hasattr(p, "to_k_ip")]
    assert len(loaded) == 16 and {p.to_k_ip[0].weight.shape[0] for p in loaded} == {320, 640, 1280}
