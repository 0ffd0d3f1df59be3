"""Pass one's image checks, in worker processes when ``prepare --workers N`` asks for more than one.

Decoding every image is what ``prepare`` spends its time on (under 1.7 ms a 58 KiB 512 px JPEG here, up to
8 ms for larger ones); the rest of a row's validation is cheap and keeps state (duplicate sessions),
so it stays in order in the parent. The parent reads a block of rows, hands their image paths to a
pool (a spawned ``ProcessPoolExecutor``), reads and hands over the next block, then
validates the first block's rows in input order with their verdicts while the pool works on the
next: the output is the same whatever N is.

A verdict keeps the image's SHA-256, so pass two copies the bytes into the shards after comparing
digests instead of decoding them again: each image is decoded once. Verdicts are kept per path
(about 200 bytes an image) until pass two is done. A pool starts only once a block of image paths is
full (``BLOCK``): small inputs never pay for it (a started pool takes the last, shorter block too).
The pool outlives pass one: ``LogsSource.write_shards`` writes pass two's shards in it, a shard a task.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

from perfusion_cli.data import records as R
from perfusion_cli.data.decode import shard_image
from perfusion_cli.data.images import ImageLimits, ImageProblem, check_image_bytes
from perfusion_cli.data.storage import LocalFolder, RemoteFolder
from perfusion_cli.errors import DataError

BLOCK = 256
T = TypeVar("T")


def _verdict(job: tuple[LocalFolder | RemoteFolder, str, ImageLimits]) -> tuple:
    """("ok", extension, sha256) | ("problem", reason, detail) | ("raise", the exception)."""
    folder, relative, limits = job
    try:
        data = folder.image(relative, limits)
    except ImageProblem as exc:
        return ("problem", exc.reason, exc.detail)
    except Exception as exc:  # an OSError or whatever a hostile file provokes: raised again in the parent
        return ("raise", exc)
    return bytes_verdict((data, limits, f"image {relative!r}"))


def bytes_verdict(job: tuple[bytes, ImageLimits, str]) -> tuple:
    """``_verdict`` for image bytes held in memory (Pick-a-Pic's parquet cells); ``name`` is for messages."""
    data, limits, name = job
    try:
        extension = check_image_bytes(data, limits, name)
    except ImageProblem as exc:
        return ("problem", exc.reason, exc.detail)
    except Exception as exc:  # raised again in the parent, as an inline check would raise it
        return ("raise", exc)
    return ("ok", extension, hashlib.sha256(data).hexdigest())


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """The worker processes both input formats decode in (spawned: no fork of a parent holding torch).

    An executor, not ``multiprocessing.Pool``: when a worker dies (the system kills it for memory, say),
    the Pool starts another and waits for ever on the work the dead one held; the executor fails that
    work with ``BrokenProcessPool``, which ``pool_map`` turns into a clear error."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with,
                               initargs=(os.getpid(),))


def _exit_with(parent: int) -> None:
    """In a worker: end as soon as the parent is gone. A killed ``prepare`` (SIGKILL, out of memory) must not
    leave workers behind, still writing shards into a staging folder the next run is using."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_pool(pool: ProcessPoolExecutor | None) -> None:
    """Stop the workers, killing them first: work under way (a block of images, a shard) is dropped, which
    only ever happens when ``prepare`` fails. Killing is what makes the stop dependable: on Python 3.11 the
    executor, broken by a dead worker, terminates the workers it knew of and then joins every worker,
    including one started meanwhile for new work, which nobody stops (our suite hung so)."""
    if pool is not None:
        for process in list((pool._processes or {}).values()):  # the executor's own table of its workers
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def pool_map(pool: ProcessPoolExecutor, function: Callable[..., T], jobs: Iterable, doing: str,
             chunksize: int = 1) -> Iterator[T]:
    """``pool.map``: the jobs handed to the workers now, the results in order as they come, and a dead
    worker (now or later) reported as what it is."""
    try:
        results = pool.map(function, jobs, chunksize=chunksize)
    except BrokenProcessPool:
        raise _died(doing) from None
    return _reported(results, doing)


def _reported(results: Iterator[T], doing: str) -> Iterator[T]:
    try:
        yield from results
    except BrokenProcessPool:
        raise _died(doing) from None


def _died(doing: str) -> DataError:
    return DataError(f"a --workers process died while {doing} (killed by the system, out of memory?): nothing "
                     f"was written; run again, with fewer --workers if it happens again")


def unpack(verdict: tuple) -> tuple[str, str]:
    """(extension, sha256) of an accepted image; raises what the check found otherwise."""
    kind, *rest = verdict
    if kind == "problem":
        raise ImageProblem(*rest)
    if kind == "raise":
        raise rest[0]
    return rest[0], rest[1]


class ImageChecks:
    """Verdicts on a logs folder's images, computed in ``workers`` processes, looked up by path."""

    def __init__(self, folder: LocalFolder | RemoteFolder, limits: ImageLimits, workers: int = 1):
        self.folder, self.limits, self.workers = folder, limits, max(1, workers)
        self._verdicts: dict[str, tuple] = {}
        self._pending: list[tuple[list[str], Iterator]] = []  # (paths, their verdicts to come) handed to the pool
        self._asked: set[str] = set()
        self._pool = None

    def prefetch(self, relatives: Iterable[str]) -> None:
        """Start checking these paths in the pool (when there is one) while the caller works on others."""
        todo = list(dict.fromkeys(r for r in relatives if isinstance(r, str) and r not in self._asked))
        if self.workers > 1 and todo and (len(todo) >= BLOCK or self._pool is not None):
            if self._pool is None:
                self._pool = spawn_pool(self.workers)
            jobs = [(self.folder, relative, self.limits) for relative in todo]
            chunk = max(1, len(jobs) // (4 * self.workers))
            self._pending.append((todo, pool_map(self._pool, _verdict, jobs, "checking images", chunk)))
            self._asked.update(todo)

    def check(self, relative: str) -> str:
        """The image's extension; raises ImageProblem (or the OSError reading it met)."""
        while relative not in self._verdicts and relative in self._asked and self._pending:
            paths, result = self._pending.pop(0)
            self._verdicts.update(zip(paths, result))
        if relative not in self._verdicts:
            self._verdicts[relative] = _verdict((self.folder, relative, self.limits))
        return unpack(self._verdicts[relative])[0]

    def verdict(self, relative: str) -> tuple:
        """What ``check`` found: ("ok", extension, sha256) or the problem (for another process's pass two)."""
        return self._verdicts[relative]

    def remember(self, relative: str, verdict: tuple) -> None:
        """Take another process's verdict (``--engine ray`` writes shards where it did not check)."""
        self._verdicts[relative] = verdict

    def read(self, relative: str) -> tuple[str, bytes]:
        """(extension, bytes) to store of an image pass one accepted (``decode.shard_image``: as a browser shows
        it, metadata gone); ImageProblem when the file has changed since."""
        kind, *rest = self._verdicts.get(relative) or ("unchecked",)
        data = self.folder.image(relative, self.limits) if kind == "ok" else b""
        if kind != "ok" or hashlib.sha256(data).hexdigest() != rest[1]:
            raise ImageProblem(R.IMAGE_CORRUPT, f"image {relative!r} is not the file pass one checked")
        return shard_image(data, self.limits.background)

    def end_scan(self) -> None:
        """Pass one is done: the pool (if one started) stays for pass two's shard writing, and the verdicts."""
        self._pending.clear()
        self._asked = set(self._verdicts)

    @property
    def pool(self):
        """The worker processes pass one started, or None (one process, or too few images to start them)."""
        return self._pool

    def stop_workers(self) -> None:
        """End the pool (the verdicts stay)."""
        self.end_scan()
        stop_pool(self._pool)
        self._pool = None
