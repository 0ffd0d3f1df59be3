"""``prepare --workers N`` decodes images in N processes and writes the same bytes as one process."""

import json

import pytest

from perfusion_cli.config import PrepareConfig, SyntheticConfig
from perfusion_cli.data.image_checks import BLOCK
from perfusion_cli.data.prepare import prepare
from perfusion_cli.data.synthetic import write_marketplace
from tests.helpers import folder_files


def test_two_workers_write_byte_identical_data_and_quarantine(tmp_path):
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=24, sessions_per_merchant=24, seed=2))
    lines = (logs / "sessions.jsonl").read_text().splitlines()
    assert len(lines) > 2 * BLOCK, "more than one block, so the pool really starts"
    # bad rows among good ones, in the second block: a corrupt image, a missing one, one leaving the folder
    (logs / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for offset, image in ((300, "images/broken.png"), (301, "images/nowhere.png"), (302, "../outside.png")):
        row = json.loads(lines[offset])
        row["candidates"][0]["image"] = image
        lines[offset] = json.dumps(row)
    (logs / "sessions.jsonl").write_text("\n".join(lines) + "\n")

    one = prepare(logs, tmp_path / "one", PrepareConfig(), workers=1)
    two = prepare(logs, tmp_path / "two", PrepareConfig(), workers=2)
    assert folder_files(tmp_path / "one") == folder_files(tmp_path / "two")
    assert one.raw["quarantine"]["reasons"] == two.raw["quarantine"]["reasons"]
    assert sum(one.raw["quarantine"]["reasons"].values()) == 3 and one.raw["accounting"]["balanced"]


def test_an_image_changed_between_the_passes_is_refused_without_a_second_decode(tmp_path):
    from perfusion_cli.data.images import ImageLimits
    from perfusion_cli.data.logs import LogsSource
    from perfusion_cli.errors import DataError

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=2, sessions_per_merchant=2, seed=1))
    source = LogsSource(logs, ImageLimits(4096 * 4096, 32 << 20))
    records = [r for r in source.scan({"m0000", "m0001"}) if hasattr(r, "images")]
    assert source.read_images(records[0])[0][1] == (logs / records[0].images[0]).read_bytes()
    (logs / records[0].images[0]).write_bytes((logs / records[0].images[1]).read_bytes())  # still a valid PNG
    with pytest.raises(DataError, match="an image changed while preparing"):
        source.read_images(records[0])
