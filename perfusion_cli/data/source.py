"""What ``prepare`` needs of an input format: the ``InputSource`` contract.

``data/logs.py`` (a raw-logs folder, local or at a URL) and ``data/pickapic.py`` (Pick-a-Pic parquet)
provide it; a third format is a new module with a class that does, and a line in
``prepare.open_source``. Pass one is ``merchants`` then ``scan``; splits are planned from the records;
pass two is ``write_shards`` (``read_images`` for one record). ``tests/unit/test_prepare_contracts.py``
holds both sources to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from perfusion_cli.data.records import GroupRecord, HeldOut, Rejection
from perfusion_cli.data.shards import ShardInfo, ShardJob


@runtime_checkable
class InputSource(Protocol):
    kind: str  # "logs", "pickapic": recorded in the manifest

    @property
    def location(self) -> Path | str:
        """What the user named: a folder or file on this machine, or a URL."""

    @property
    def sessions_file(self) -> str:
        """The file quarantine and held-out rows point into."""

    @property
    def synthetic(self) -> bool:
        """Whether this is the synthetic marketplace (it carries each merchant's hidden taste)."""

    def merchants(self) -> tuple[dict[str, dict], list[Rejection]]:
        """Every valid merchant's profile by canonical id, and the merchant rows refused."""

    def scan(self, known_merchants: set[str]) -> Iterator[GroupRecord | Rejection | HeldOut]:
        """Pass one: every session row, in input order, as a record, a rejection or a row held out."""

    def write_shards(self, jobs: list[ShardJob], directory: Path, shard_size: int) -> Iterator[tuple[ShardInfo, int]]:
        """Pass two: the shards of ``jobs`` written into ``directory``, in order."""

    def read_images(self, record: GroupRecord) -> list[tuple[str, bytes]]:
        """One record's images as they go into a shard, checked against what pass one decoded."""

    def input_files(self) -> list[Path]:
        """The input files on this machine (none for a URL): prepare refuses to write over them."""

    def copy_truth(self, target: Path) -> None:
        """Synthetic data only: copy the hidden tastes to ``target``."""

    def describe(self) -> dict:
        """Kind, input checksums and row counts, for the manifest."""

    def close(self) -> None:
        """Stop any worker processes."""
