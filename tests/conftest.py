import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def market(tmp_path_factory):
    """A prepared tiny synthetic marketplace shared by read-only tests: (data_dir, manifest)."""
    from tests.helpers import tiny_market

    out = tmp_path_factory.mktemp("market")
    manifest = tiny_market(out, merchants=8, sessions=12)
    return out, manifest


@pytest.fixture(scope="session")
def medium_market(tmp_path_factory):
    """A larger prepared marketplace (24 merchants x 24 sessions) for the tests that learn taste."""
    from tests.helpers import tiny_market

    out = tmp_path_factory.mktemp("medium")
    tiny_market(out, merchants=24, sessions=24, seed=1)
    return out


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, market):
    """A workspace (the tiny recipe, the market's data) with a trained tiny generator and reward model: the one
    that ``generate``, ``serve`` and the first-contact tests share (trained once a session)."""
    from perfusion_cli.training.gen import train_generator
    from perfusion_cli.training.rm import train_reward_model
    from tests.helpers import tiny_config, tiny_recipe, write_recipe

    data_dir, _ = market
    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(data_dir, root / "data", ignore=shutil.ignore_patterns("raw"))
    write_recipe(root / "perfusion.toml", tiny_recipe())
    train_generator(tiny_config("train-gen"), root / "data", root / "runs" / "gen")
    train_reward_model(tiny_config("train-rm"), root / "data", root / "runs" / "rm")
    return root


def _random_towers(tmp_path_factory, name: str):
    """A randomly initialized tiny CLIP or SigLIP with the tiny tokenizer, saved in Hugging Face format."""
    from perfusion_cli.models import tiny

    folder = tmp_path_factory.mktemp(f"tiny-{name}")
    tokenizer = tiny.build_tokenizer()
    getattr(tiny, f"build_tiny_{name}")(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialized tiny CLIP (no pre-training needed)."""
    return _random_towers(tmp_path_factory, "clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    """A randomly initialized tiny SigLIP (transformers' SiglipModel)."""
    return _random_towers(tmp_path_factory, "siglip")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A randomly initialized tiny Stable-Diffusion folder (diffusers layout), made from the tiny configs."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from perfusion_cli.models.tiny import (build_tiny_clip, build_tiny_unet, build_tiny_vae, build_tokenizer,
                                           tiny_noise_scheduler)
    from perfusion_cli.training.tiny_bases import text_encoder_from_clip

    folder = tmp_path_factory.mktemp("tiny-sd")
    tokenizer = build_tokenizer()
    pipeline = StableDiffusionPipeline(
        vae=build_tiny_vae(), text_encoder=text_encoder_from_clip(build_tiny_clip(tokenizer)), tokenizer=tokenizer,
        unet=build_tiny_unet(), scheduler=DDIMScheduler.from_config(tiny_noise_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--force-color-profile=srgb"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright (skips only when Chromium is missing; .ci/run installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
