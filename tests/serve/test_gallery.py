"""The shown candidates on disk: opaque ids, and the old ones forgotten at start."""

import os
import time

from perfusion_cli.serving.gallery import Gallery, Shown


def test_the_gallery_forgets_candidates_shown_longer_ago_than_it_keeps(tmp_path):
    gallery = Gallery(tmp_path)
    shown = Shown("r1", "m1", "linen dress", 0, None, None)
    old, new = gallery.add(b"old png", shown), gallery.add(b"new png", shown)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(tmp_path / f"{old}.json", (ten_days_ago, ten_days_ago))
    again = Gallery(tmp_path, keep_days=7)
    assert again.pruned == 1 and again.image(old) is None and again.shown(old) is None
    assert again.image(new) == b"new png" and again.shown(new) == shown


def test_an_id_names_a_file_only_when_it_is_32_hex_digits(tmp_path):
    gallery = Gallery(tmp_path / "g")
    (tmp_path / "secret.png").write_bytes(b"not yours")
    for name in ("../secret", "..%2Fsecret", "A" * 32, "a" * 33, ""):
        assert gallery.image(name) is None and gallery.shown(name) is None
