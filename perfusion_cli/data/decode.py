"""Images as a browser shows them (DESIGN §13): the one decoding every reader of an image shares.

``render`` turns any image PIL opens into 8-bit RGB the way a browser paints it on a page of the
recipe's background colour:

- EXIF orientation applied (phone photos stored sideways are shown upright);
- an embedded ICC profile converted to sRGB (a Display P3 or Adobe RGB photo keeps its colours);
- transparency (RGBA, LA, palette with tRNS, WebP alpha) composited on the background, white by
  default: a cut-out product on black would teach "black background";
- 16-bit samples scaled to 8 bits (not clipped: clipping paints a 16-bit PNG all white); palette, 1-bit,
  CMYK and the other modes converted to RGB;
- nothing else kept: no metadata leaves ``render``.

``prepare`` stores what ``render`` gives (``shard_image``), ``load_image`` in the loader decodes shard bytes
through it again (shards of older versions and other tools included), and ``serve`` and the evaluation read
images only through the loader or their own rendered tensors.

``shard_image`` keeps the original encoding when rendering would not change a pixel (an 8-bit RGB or grey
JPEG or PNG, upright, opaque, without a colour profile), only with its metadata removed: JPEG's APP1–APP13,
APP15 and comment segments, PNG's ancillary chunks. Everything else is stored as the PNG of its rendering.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps

from perfusion_cli.errors import ConfigError

WHITE = (255, 255, 255)
_NAMED = {"white": WHITE, "black": (0, 0, 0)}
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112
_SRGB = ImageCms.createProfile("sRGB")


def parse_background(text: str) -> tuple[int, int, int]:
    """``white``, ``black`` or ``#rrggbb`` as an RGB triple; ConfigError otherwise."""
    if text.lower() in _NAMED:
        return _NAMED[text.lower()]
    match = _HEX.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"background must be white, black or #rrggbb, got {text!r}")
    value = match.group(1)
    return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def render(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """``image`` as 8-bit RGB, as a browser paints it on ``background`` (see the module docstring)."""
    image = ImageOps.exif_transpose(image)
    image = _to_srgb(image)
    if image.mode in _SIXTEEN_BIT:
        samples = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8), "L")
    if "transparency" in image.info and image.mode in ("P", "RGB", "L", "1"):  # palette or colour-key tRNS
        image = image.convert("RGBA")
    if image.mode in _ALPHA:
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Image bytes → ``render``; PIL's exceptions pass through (callers say which sample failed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-with-transparency notes and the like: handled by render
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return render(image, background)


def unchanged_by_render(image: Image.Image) -> bool:
    """Whether ``render`` would give exactly the decoded pixels: 8-bit RGB or grey, upright, no profile."""
    orientation = image.getexif().get(_ORIENTATION, 1)
    return (image.mode in ("RGB", "L") and orientation in (0, 1) and not image.info.get("icc_profile")
            and "transparency" not in image.info)


def shard_image(data: bytes, background: tuple[int, int, int] = WHITE) -> tuple[str, bytes]:
    """What ``prepare`` stores for an image file: (extension, bytes), metadata gone (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and unchanged_by_render(image):
                return "jpg", _strip_jpeg(data)
            if image.format == "PNG" and data[24:25] == b"\x08" and unchanged_by_render(image):  # IHDR: 8-bit
                return "png", _strip_png(data)
            image.load()
            rendered = render(image, background)
    buffer = io.BytesIO()
    rendered.save(buffer, format="PNG", compress_level=4)
    return "png", buffer.getvalue()


def _to_srgb(image: Image.Image) -> Image.Image:
    """Pixels in sRGB when the image carries another ICC profile (an unreadable profile is ignored, as browsers
    ignore it); alpha is kept apart and put back."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return image
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    colour = image.convert({"RGBA": "RGB", "LA": "L"}.get(image.mode, image.mode))
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        converted = ImageCms.profileToProfile(colour, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


# JPEG markers whose segments are pure metadata: APP1 (EXIF, XMP) … APP13, APP15, COM. APP0 (JFIF) and APP14
# (Adobe: the colour transform) say how to decode the pixels, so they stay.
_JPEG_DROP = {*range(0xE1, 0xEE), 0xEF, 0xFE}
# PNG chunks that make the picture; every other chunk (text, EXIF, time, physical size, …) is ancillary
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _strip_jpeg(data: bytes) -> bytes:
    """The JPEG without its metadata segments; the entropy-coded data from the first scan on is copied as is."""
    out, position = [data[:2]], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            break
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker not in _JPEG_DROP:
            out.append(data[position:position + 2 + length])
        position += 2 + length
    out.append(data[position:])
    return b"".join(out)


def _strip_png(data: bytes) -> bytes:
    """The PNG with only its critical chunks (what ``unchanged_by_render`` allowed holds no tRNS or iCCP)."""
    out, position = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if kind in _PNG_KEEP:
            out.append(data[position:end])
        position = end
        if kind == b"IEND":
            break
    return b"".join(out)
