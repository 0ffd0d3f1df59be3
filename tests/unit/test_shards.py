"""Shards are WebDataset tars: ours are the bytes webdataset's own writer makes, and ``prepare`` needs no torch."""

import io
import json
import subprocess
import sys

import webdataset as wds

from perfusion_cli.data.shards import SplitWriter


def test_shard_bytes_are_webdataset_tarwriters(tmp_path):
    samples = [("r000000001", {"prompt": "linen dress", "selected": [True, False]},
                [("png", b"\x89PNG first"), ("jpg", b"\xff\xd8 second")], None),
               ("r000000002", {"prompt": "ça va", "selected": [False, True, False]},
                [("webp", b"RIFF a"), ("png", b""), ("png", bytes(range(256)) * 9)],
                {"latents.npy": b"\x00" * 1000})]
    writer = SplitWriter(tmp_path, "train", shard_size=10)
    for key, meta, images, extra in samples:
        writer.write(key, meta, images, extra)
    (shard,) = writer.close()

    expected = io.BytesIO()
    reference = wds.TarWriter(expected, user="perfusion", group="perfusion", mode=0o644, encoder=False, mtime=0)
    for key, meta, images, extra in samples:
        sample = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode("utf-8"), **(extra or {})}
        sample.update({f"{index}.{extension}": data for index, (extension, data) in enumerate(images)})
        reference.write(sample)
    reference.close()
    assert (tmp_path / shard.name).read_bytes() == expected.getvalue()
    assert shard.groups == 2 and writer.candidates == 5

    read = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / shard.name)]), wds.tarfile_to_samples()))
    assert [s["__key__"] for s in read] == ["r000000001", "r000000002"]
    assert read[1]["2.png"] == bytes(range(256)) * 9 and read[1]["latents.npy"] == b"\x00" * 1000


def test_prepare_runs_without_importing_torch(tmp_path):
    """Start-up is part of every prepare (and of every worker process it spawns): no torch in that path."""
    from perfusion_cli.config import SyntheticConfig
    from perfusion_cli.marketplace.synthetic import write_marketplace

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=4, sessions_per_merchant=6, seed=1))
    script = ("import sys\nfrom perfusion_cli.cli.main import main\n"
              f"sys.argv = ['perfusion', 'prepare', {str(logs)!r}, '--out', {str(tmp_path / 'data')!r}, "
              "'--min-records', '1']\n"
              "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
              "print('imported:', sorted(m for m in ('torch', 'webdataset') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert (tmp_path / "data" / "manifest.json").is_file()
