"""What ``serve`` does between HTTP and the model: generate candidates for asks, check picks against them.

A ``Studio`` wraps the ``Designer`` that ``perfusion generate`` uses (same conditions, seeds, batching
and reward scores), shows its images through the ``Gallery`` and records picks in the ``SessionJournal``.
Validation that needs no model (merchant known, profile typed, picks consistent) happens before a
request is queued, so a bad request is refused at once.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

from perfusion_cli.data.merchants import UnknownMerchant, typed_profile
from perfusion_cli.data.requests import Request, checked_request
from perfusion_cli.errors import ConfigError, DataError
from perfusion_cli.designer import Designer
from perfusion_cli.pipeline import to_pil
from perfusion_cli.serving.gallery import Gallery, Shown, new_id
from perfusion_cli.serving.journal import Pick, SessionJournal


@dataclass(frozen=True)
class Ask:
    """One generation request, checked: ``profile`` is set only for a cold-start merchant."""

    merchant_id: str
    prompt: str
    n: int
    seed: int
    profile: dict | None


def png(image) -> bytes:
    """A [3, H, W] tensor in [0, 1] as PNG bytes."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


class BadPick(DataError):
    """A session that does not match what was shown."""


class Studio:
    def __init__(self, designer: Designer, gallery: Gallery, journal: SessionJournal):
        self.designer, self.gallery, self.journal = designer, gallery, journal

    @property
    def merchants(self) -> list[str]:
        return sorted(self.designer.merchants)

    def ask(self, merchant_id: str, prompt: str, n: int, seed: int | None, features: dict | None) -> Ask:
        """Check a request; ``UnknownMerchant`` when the merchant is neither prepared nor described."""
        profile = None
        if merchant_id not in self.designer.merchants:
            if features is None:
                raise UnknownMerchant(f"unknown merchant {merchant_id!r}: not in the prepared data; send its profile "
                                      f"as \"features\" for a cold start")
            profile = typed_profile(features, self.designer.pipeline.branch.vocab, "features")
        request = checked_request(merchant_id, prompt, n, secrets.randbelow(2**31) if seed is None else seed)
        return Ask(request.merchant, request.prompt, request.n, request.seed, profile)

    def generate(self, asks: list[Ask]) -> list[dict]:
        """Every ask's candidates in one pipeline call (the batcher's worker calls this), best first when a
        reward model is loaded."""
        designer = self.designer
        conditions = [designer.condition(ask.merchant_id, profile=ask.profile,
                                         cold_start="features" if ask.profile is not None else None) for ask in asks]
        requests = [Request(ask.merchant_id, ask.prompt, ask.n, ask.seed) for ask in asks]
        answers = []
        for ask, images, condition in zip(asks, designer.images(requests, conditions), conditions):
            scores = designer.scores(ask.prompt, images, condition)["values"] or [None] * ask.n
            order = designer.ranked(scores, ask.n)
            request_id = new_id()
            candidates = []
            for index in order:
                shown = Shown(request_id, ask.merchant_id, ask.prompt, ask.seed + index, scores[index], ask.profile)
                image_id = self.gallery.add(png(images[index]), shown)
                candidates.append({"id": image_id, "url": f"/v1/images/{image_id}", "seed": shown.seed,
                                   "score": scores[index]})
            answers.append({"request_id": request_id, "merchant_id": ask.merchant_id, "prompt": ask.prompt,
                            "seed": ask.seed, "merchant_source": condition.source["source"],
                            "reranked": designer.config.rerank, "candidates": candidates})
        return answers

    def record(self, session_id: str, merchant_id: str, prompt: str, candidates: list[str],
               selected: list[str], recorded_by: str | None = None) -> bool:
        """Record a merchant's picks; False when this session was already recorded (a retry). ``recorded_by``:
        the id of the token that asks (kept with the session, so ``prepare --exclude-token`` can drop it)."""
        if len(set(candidates)) != len(candidates):
            raise BadPick("a candidate id appears twice in \"candidates\"")
        if len(candidates) < 2:
            raise BadPick("a session needs at least 2 candidates")
        if not set(selected) <= set(candidates) or len(set(selected)) != len(selected):
            raise BadPick("\"selected\" must name distinct ids from \"candidates\"")
        if not selected or len(selected) == len(candidates):
            raise BadPick("select at least one candidate and leave at least one: a group needs both to say a "
                          "preference")
        shown = {}
        for image_id in candidates:
            seen = self.gallery.shown(image_id)
            if seen is None or seen.merchant_id != merchant_id:  # another merchant's image is not one to tell of
                raise BadPick(f"unknown candidate id {image_id!r}: not an image this server generated for merchant "
                              f"{merchant_id!r}")
            if seen.prompt != prompt:
                raise BadPick(f"candidate {image_id} was generated for another prompt")
            shown[image_id] = seen
        prepared = self.designer.merchants.get(merchant_id)
        profile = prepared["features"] if prepared else next(s.profile for s in shown.values())
        if profile is None:  # pragma: no cover — a cold-start image always carries its profile
            raise ConfigError(f"no profile known for merchant {merchant_id!r}")
        images = {image_id: self.gallery.image(image_id) for image_id in candidates}
        return self.journal.record(Pick(session_id, merchant_id, prompt, tuple(candidates), frozenset(selected)),
                                   images, profile, recorded_by)
