"""Images as a browser shows them (DESIGN §13): for every kind of product image a marketplace sends, the tensor
that trains equals a reference rendering, computed here independently with numpy (alpha blending, rotations,
16 → 8 bits), and, where Chromium is installed, the pixels Chromium paints for the same file on a white page."""

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from perfusion_cli.data.decode import parse_background, shard_image
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.errors import ConfigError
from tests.helpers import prepare_logs, session, write_image, write_logs

SIZE = 32
RNG = np.random.default_rng(7)
COLOURS = (RNG.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)  # asymmetric: a rotation shows
ALPHA = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))  # transparent … opaque, left to right
ALPHA[:4] = 0  # a fully transparent band: the cut-out's background


def over_white(rgb: np.ndarray, alpha: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb * a + np.array(background, dtype=np.float64) * (1 - a)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _png_16bit_rgb(samples: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = samples.shape
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _jpeg_rotated(orientation: int) -> tuple[bytes, np.ndarray]:
    """A JPEG whose EXIF says ``orientation``; the reference is its stored pixels turned upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(COLOURS), "JPEG", quality=95, exif=exif.tobytes())
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)  # as written, not turned
    upright = {3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
    return data, upright


def cases() -> dict[str, tuple[bytes, np.ndarray, float]]:
    """name → (file bytes, reference rendering [H, W, 3] in 0..255, tolerance in 0..255)."""
    rgba = np.dstack([COLOURS, ALPHA])
    palette = Image.fromarray(COLOURS).quantize(16)
    palette_rgb = np.asarray(palette.convert("RGB")).astype(np.float64)
    index = np.asarray(palette)
    transparent = int(index[0, 0])
    palette.info["transparency"] = transparent
    grey16 = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 64).astype(np.uint16)
    rgb16 = (RNG.random((SIZE, SIZE, 3)) * 65535).astype(np.uint16)
    la = np.dstack([COLOURS[..., 0], ALPHA])
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("Comment", "x" * 2_000_000)  # 2 MB of text chunk (the issue met 20 MB)
    out = {
        "rgba cut-out": (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), over_white(COLOURS, ALPHA), 0.6),
        "palette + tRNS": (_encode(palette, "PNG", transparency=transparent), np.where(
            (index == transparent)[..., None], 255.0, palette_rgb), 0.0),
        "webp alpha": (_encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True, exact=True),
                       over_white(COLOURS, ALPHA), 0.6),
        "grey + alpha": (_encode(Image.fromarray(la, "LA"), "PNG"),
                         over_white(np.repeat(COLOURS[..., :1], 3, axis=2), ALPHA), 0.6),
        "16-bit grey": (_encode(Image.fromarray(grey16), "PNG"), np.repeat((grey16 / 257.0)[..., None], 3, 2), 0.6),
        "16-bit rgb": (_png_16bit_rgb(rgb16), rgb16 / 257.0, 1.1),
        "text chunks": (_encode(Image.fromarray(COLOURS), "PNG", pnginfo=metadata), COLOURS.astype(np.float64), 0.0),
    }
    for orientation in (3, 6, 8):
        data, upright = _jpeg_rotated(orientation)
        out[f"jpeg exif {orientation}"] = (data, upright, 0.0)
    return out


CASES = cases()


@pytest.fixture(scope="module")
def trained_tensors(tmp_path_factory):
    """Each case's image through prepare and the loader, as training reads it: name → [H, W, 3] in 0..255."""
    root = tmp_path_factory.mktemp("decode") / "logs"
    sessions = []
    for number, (name, (data, _, _)) in enumerate(CASES.items()):
        relative = write_image(root, f"images/case-{number}.img", data)
        sessions.append(session(name, images=(relative, "images/a.png"), timestamp=number))
    write_logs(root, [{"merchant_id": "m1"}], sessions)
    data_dir = root.parent / "data"
    prepare_logs(root, data_dir, min_records=1, cold_start_fraction=0.0, val_fraction=0.0, test_fraction=0.0)
    tensors = {}
    for batch in eval_batches(StreamSpec(data_dir, "train", 4, 2, SIZE)):
        for row, name in enumerate(batch.session_ids):
            tensors[name] = batch.images[row, 0].permute(1, 2, 0).numpy().astype(np.float64) * 255
    return data_dir, tensors


@pytest.mark.parametrize("name", list(CASES))
def test_the_training_tensor_is_the_reference_rendering(trained_tensors, name):
    _, tensors = trained_tensors
    _, reference, tolerance = CASES[name]
    difference = np.abs(tensors[name] - reference).max()
    assert difference <= tolerance + 0.51, f"{name}: off by {difference:.2f} of 255"


def test_no_metadata_reaches_a_shard(trained_tensors):
    data_dir, _ = trained_tensors
    shards = b"".join(path.read_bytes() for path in (data_dir / "shards").glob("*.tar"))
    assert b"x" * 1000 not in shards and b"Exif" not in shards
    assert sum(path.stat().st_size for path in (data_dir / "shards").glob("*.tar")) < 200_000


def test_the_background_is_the_recipes(tmp_path):
    rgba = np.dstack([COLOURS, ALPHA])
    _, stored = shard_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), parse_background("#102030"))
    pixels = np.asarray(Image.open(io.BytesIO(stored))).astype(np.float64)
    assert np.abs(pixels - over_white(COLOURS, ALPHA, (16, 32, 48))).max() <= 1.1
    with pytest.raises(ConfigError, match=r"background must be white, black or #rrggbb, got 'pink'"):
        parse_background("pink")


def test_an_unchanged_image_keeps_its_bytes_without_its_metadata():
    plain = _encode(Image.fromarray(COLOURS), "PNG")
    assert shard_image(plain) == ("png", plain)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # a maker tag, and a GPS-like comment: metadata, no pixel change
    jpeg = _encode(Image.fromarray(COLOURS), "JPEG", quality=90, exif=exif.tobytes(), comment=b"lat 48.85 lon 2.35")
    extension, stored = shard_image(jpeg)
    assert extension == "jpg" and b"PhoneMaker" not in stored and b"lat 48.85" not in stored
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(Image.open(io.BytesIO(jpeg))))


@pytest.mark.browser
def test_chromium_paints_what_training_reads(trained_tensors, chromium):
    """Every case as an <img> on a white page in Chromium (sRGB, scale 1), screenshotted pixel for pixel."""
    _, tensors = trained_tensors
    kinds = {b"\x89PNG": "png", b"RIFF": "webp", b"\xff\xd8": "jpeg"}
    page = chromium.new_page(viewport={"width": 400, "height": 200}, device_scale_factor=1)
    try:
        for name, (data, _, tolerance) in CASES.items():
            kind = next(v for k, v in kinds.items() if data.startswith(k))
            source = f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
            page.set_content("<html><body style='margin:0;background:#fff'>"
                             f"<img id='i' src={json.dumps(source)} style='display:block'></body></html>")
            page.wait_for_function("document.getElementById('i').complete")
            shot = np.asarray(Image.open(io.BytesIO(page.locator("#i").screenshot())).convert("RGB"))
            assert shot.shape == (SIZE, SIZE, 3), name
            # JPEG decoders differ by a few levels (IDCT, chroma upsampling); PNG and WebP decode exactly
            allowed = 6 if kind == "jpeg" else tolerance + 1.5
            difference = np.abs(shot.astype(np.float64) - tensors[name]).max()
            assert difference <= allowed, f"{name}: Chromium and training differ by {difference:.1f} of 255"
    finally:
        page.close()
