"""Where a logs folder lives: a local folder, or any fsspec URL (``https://``, ``s3://``, ``gs://``, …).

``open_folder`` gives one interface to both: open a file of the folder, read an image a log row
references (refused when its path leaves the folder, for URLs too), fingerprint a file. Credentials
and endpoints are fsspec's usual configuration (environment, config files); nothing here handles
them. ``file://`` URLs are local folders. Folders are picklable, so ``prepare --workers`` processes
read images themselves.
"""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from perfusion_cli.data import records as R
from perfusion_cli.data.images import ImageLimits, ImageProblem, resolve_inside
from perfusion_cli.errors import DataError

CHUNK = 1 << 20


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def open_folder(location: str | Path) -> "LocalFolder | RemoteFolder":
    if is_url(location):
        return RemoteFolder(str(location))
    text = str(location)
    return LocalFolder(Path(text[len("file://"):] if text.startswith("file://") else text))


class LocalFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_file(self, name: str) -> bool:
        return (self.path / name).is_file()

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self.path / name, "rb")
        except OSError as exc:
            raise DataError(f"cannot read {self.path / name}: {exc.strerror or exc}") from None

    def image(self, relative: str, limits: ImageLimits) -> bytes:
        """The bytes of an image a row references; ImageProblem if it escapes, is missing or too large."""
        path = resolve_inside(self.path, relative)
        if not path.is_file():
            raise ImageProblem(R.IMAGE_MISSING, f"image {relative!r} does not exist")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageProblem(R.IMAGE_TOO_LARGE, f"image {relative!r} has {size} bytes (limit {limits.max_bytes})")
        return path.read_bytes()

    def local_files(self, names: list[str]) -> list[Path]:
        """Paths on this machine (prepare refuses to write over its own input)."""
        return [self.path / name for name in names]


class RemoteFolder:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._fs = None

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict:
        return {"url": self.url, "_fs": None}  # each process makes its own filesystem client

    @property
    def fs(self):
        if self._fs is None:
            try:
                import fsspec

                self._fs, _ = fsspec.core.url_to_fs(self.url)
            except ImportError as exc:
                raise DataError(f"reading {self.url} needs {exc.name}: pip install 'perfusion[remote]' (and the "
                                f"fsspec backend of its scheme, e.g. s3fs or gcsfs)") from None
            except ValueError as exc:
                raise DataError(f"cannot read {self.url}: {exc}") from None
        return self._fs

    def address(self, relative: str) -> str:
        """The URL of a file the folder references; ImageProblem when the path would leave the folder.

        The path means what it means on a disk: a file name, never decoded (``%2e%2e`` is a name, not
        ``..``); it is percent-encoded into the URL, so the server sees that name and no traversal."""
        if not relative or "\x00" in relative or relative.startswith("/"):
            raise ImageProblem(R.IMAGE_PATH_ESCAPES, f"image path {relative!r} must be relative to the logs folder")
        normal = posixpath.normpath(relative)
        if normal == ".." or normal.startswith("../"):
            raise ImageProblem(R.IMAGE_PATH_ESCAPES, f"image path {relative!r} leaves the logs folder")
        return f"{self.url}/{quote(normal)}"

    def exists(self) -> bool:
        return True  # a URL prefix need not be listable (plain HTTP is not); its files are checked one by one

    def is_file(self, name: str) -> bool:
        try:
            return self.fs.isfile(self.address(name))
        except (OSError, ImageProblem):
            return False

    def open(self, name: str) -> BinaryIO:
        try:
            return self.fs.open(self.address(name), "rb", block_size=CHUNK)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.address(name)}: {exc}") from None

    def image(self, relative: str, limits: ImageLimits) -> bytes:
        address = self.address(relative)
        try:
            with self.fs.open(address, "rb") as handle:
                data = handle.read(limits.max_bytes + 1)
        except FileNotFoundError:
            raise ImageProblem(R.IMAGE_MISSING, f"image {relative!r} does not exist") from None
        if len(data) > limits.max_bytes:
            raise ImageProblem(R.IMAGE_TOO_LARGE, f"image {relative!r} is over the limit of {limits.max_bytes} bytes")
        return data

    def local_files(self, names: list[str]) -> list[Path]:
        return []


def sha256_of(folder: LocalFolder | RemoteFolder, name: str) -> str:
    digest = hashlib.sha256()
    with folder.open(name) as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def upload(local: Path, url: str, progress=None) -> None:
    """A prepared data folder copied to ``url``: the old manifest removed first (the folder reads as not
    prepared meanwhile), the old shards next, every other file, and the manifest last."""
    from perfusion_cli.data.manifest import MANIFEST, SHARD_DIR

    fs = RemoteFolder(url).fs
    base = fs._strip_protocol(url.rstrip("/"))
    if fs.exists(f"{base}/{MANIFEST}"):
        fs.rm(f"{base}/{MANIFEST}")
    if fs.exists(f"{base}/{SHARD_DIR}"):
        fs.rm(f"{base}/{SHARD_DIR}", recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST
                   and not any(part.startswith(".") for part in p.relative_to(local).parts))
    if progress is not None:
        progress.start(f"uploading to {url}", len(files) + 1)
    for path in [*files, local / MANIFEST]:
        fs.put_file(str(path), f"{base}/{path.relative_to(local).as_posix()}")
        if progress is not None:
            progress.advance(1)
    if progress is not None:
        progress.stop()
