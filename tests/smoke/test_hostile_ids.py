"""Merchant ids that reach HTML, file names and the terminal (third hostile pass, class 3).

Two merchants of the tiny marketplace are renamed to ids an attacker would pick — markup that closes the
attribute it lands in, markup that closes the element, a path — and prepared with the trained generator's
vocabulary (``prepare --vocab``: the real path for new logs). Every HTML writer then shows them: ``eval gen``'s
report and ``serve``'s page, both rendered in Chromium, where no script of theirs may run.
"""

import html
import json
import shutil

import httpx
import pytest

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.prepare import prepare
from perfusion_cli.evaluation.gen import evaluate_generator
from tests.helpers import tiny_config
from tests.serve.conftest import Server

HOSTILE = {"101": "q' onerror='window.pwned=1' x='", "102": '</h3><img src=x onerror="window.pwned=2"><h3>',
           "103": "../../a/b\\c"}


@pytest.fixture(scope="module")
def hostile_workspace(trained_workspace, market, tmp_path_factory):
    """The trained workspace's models over logs whose merchants 101–103 carry hostile ids."""
    data_dir, _ = market
    root = tmp_path_factory.mktemp("hostile-ids")
    logs = root / "logs-in"
    shutil.copytree(data_dir / "raw", logs)
    (logs / "truth.json").unlink()  # real logs, as far as prepare knows
    for name in ("merchants.jsonl", "sessions.jsonl"):
        rows = [json.loads(line) for line in (logs / name).read_text().splitlines()]
        for row in rows:
            row["merchant_id"] = HOSTILE.get(row["merchant_id"], row["merchant_id"])
        (logs / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare(logs, root / "data", PrepareConfig(cold_start_fraction=0.0), vocab=load_manifest(trained_workspace / "data").vocab)
    shutil.copytree(trained_workspace / "runs", root / "runs")
    shutil.copy(trained_workspace / "perfusion.toml", root / "perfusion.toml")
    return root


@pytest.fixture(scope="module")
def report(hostile_workspace):
    config = tiny_config("eval-gen", max_pairs=64, n_per_prompt=1, clip_model="tiny", reward=None)
    summary = evaluate_generator(hostile_workspace / "runs" / "gen", hostile_workspace / "data", config,
                                 hostile_workspace / "report")
    return summary, hostile_workspace / "report"


def test_eval_gen_with_hostile_ids_finishes_and_names_files_safely(report):
    summary, folder = report
    assert summary["merchants"] == 7  # every merchant of the split (108 logs too few), the hostile three among them
    images = sorted(p.name for p in (folder / "images").iterdir())
    assert len(images) == 2 * summary["pairs"] and all("/" not in name and "'" not in name and "<" not in name for name in images)
    assert not (folder.parent / "a").exists() and not (folder.parent.parent / "a").exists()
    page = (folder / "index.html").read_text()
    for hostile in (HOSTILE["101"], HOSTILE["102"]):
        assert hostile not in page and html.escape(hostile) in page  # shown, and only escaped


@pytest.mark.browser
def test_the_report_runs_no_script_of_a_merchant_id(report, chromium):
    _, folder = report
    page = chromium.new_page()
    try:
        page.goto((folder / "index.html").as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("window.pwned") is None
        headings = page.locator("h3").all_text_contents()
        assert f"merchant {HOSTILE['101']}" in headings and f"merchant {HOSTILE['102']}" in headings
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    finally:
        page.close()


@pytest.mark.browser
def test_the_serve_page_runs_no_script_of_a_merchant_id(hostile_workspace, chromium, tmp_path):
    with Server(hostile_workspace, tmp_path / "logs") as server:
        assert set(HOSTILE.values()) <= set(httpx.get(server.url("/v1/merchants")).json()["merchants"])
        page = chromium.new_page()
        try:
            page.goto(server.url("/"))
            page.wait_for_function(f"document.querySelectorAll('#merchant option').length >= {len(HOSTILE)}")
            page.select_option("#merchant", HOSTILE["102"])
            page.fill("#prompt", "linen dress")
            page.fill("#n", "2")
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('.candidate img').length === 2")
            page.locator(".candidate").first.click()
            page.click("#record")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('Recorded')")
            assert page.evaluate("window.pwned") is None
            options = page.locator("#merchant option").all_text_contents()
            assert HOSTILE["101"] in options and HOSTILE["102"] in options  # shown as text, whole
        finally:
            page.close()
    [line] = [json.loads(row) for row in (tmp_path / "logs" / "sessions.jsonl").read_text().splitlines()]
    assert line["merchant_id"] == HOSTILE["102"]
