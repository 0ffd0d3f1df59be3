"""Image checks shared by every input format: path safety, size limits, a full decode."""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from perfusion_cli.data import records as R
from perfusion_cli.data.decode import WHITE
from perfusion_cli.data.records import RowError

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be, and the background its transparency is composited on when stored."""

    max_pixels: int
    max_bytes: int
    max_aspect_ratio: float = 8.0
    background: tuple[int, int, int] = WHITE


class ImageProblem(RowError):
    """Raised by the checks below; ``reason`` is a quarantine code."""


def resolve_inside(root: Path, relative: str) -> Path:
    """``root/relative`` if it stays inside ``root`` (symbolic links followed), else ImageProblem."""
    if not relative or os.path.isabs(relative) or "\x00" in relative:
        raise ImageProblem(R.IMAGE_PATH_ESCAPES, f"image path {relative!r} must be relative to the logs folder")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, target]) != real_root:
        raise ImageProblem(R.IMAGE_PATH_ESCAPES, f"image path {relative!r} leaves the logs folder")
    return Path(target)


def check_image_bytes(data: bytes, limits: ImageLimits, name: str) -> str:
    """Decode ``data`` fully; returns the file extension to store it under."""
    if len(data) == 0:
        raise ImageProblem(R.IMAGE_EMPTY, f"{name} is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageProblem(R.IMAGE_TOO_LARGE, f"{name} has {len(data)} bytes (limit {limits.max_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise ImageProblem(R.IMAGE_TOO_LARGE,
                                       f"{name} is {width}x{height} (limit {limits.max_pixels} pixels)")
                if width == 0 or height == 0:
                    raise ImageProblem(R.IMAGE_EMPTY, f"{name} is {width}x{height}")
                if max(width, height) > limits.max_aspect_ratio * min(width, height):
                    raise ImageProblem(R.IMAGE_ASPECT, f"{name} is {width}x{height}: aspect ratio above "
                                                       f"{limits.max_aspect_ratio:g} (the training crop would keep "
                                                       f"a sliver of it)")
                image.load()
                kind = image.format or ""
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(R.IMAGE_TOO_LARGE, f"{name}: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        # without the object addresses PIL puts in some messages, so the quarantine is the same run to run
        message = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
        raise ImageProblem(R.IMAGE_CORRUPT, f"{name} cannot be decoded: {type(exc).__name__}: {message}") from None
    if kind not in EXTENSIONS:
        raise ImageProblem(R.IMAGE_CORRUPT, f"{name} has unsupported format {kind or 'unknown'}")
    return EXTENSIONS[kind]
