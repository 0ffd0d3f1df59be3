"""The merchant's page in headless Chromium (Playwright, the system's Chromium): pick a merchant, type a
prompt, click two candidates, record; the session is in sessions.jsonl with exactly those picks."""

import pytest

from tests.helpers import read_jsonl
from tests.serve.conftest import Server

pytestmark = pytest.mark.browser


def test_a_merchant_picks_candidates_on_the_page_and_the_session_is_recorded(serve_workspace, tmp_path, chromium):
    with Server(serve_workspace, tmp_path / "logs") as server:
        page = chromium.new_page()
        page.goto(server.url("/"))
        page.wait_for_selector("#merchant option[value='103']", state="attached")
        page.select_option("#merchant", "103")
        page.fill("#prompt", "linen dress")
        page.fill("#n", "3")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.candidate img').length === 3")
        page.wait_for_function("[...document.querySelectorAll('.candidate img')].every(i => i.complete && i.naturalWidth)")
        candidates = page.query_selector_all(".candidate")
        ids = [c.get_attribute("data-id") for c in candidates]
        assert page.is_disabled("#record")  # nothing picked yet
        candidates[0].click()
        candidates[2].click()
        page.click("#record")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Recorded')")
        status = page.text_content("#status")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.close()
    [line] = read_jsonl(tmp_path / "logs" / "sessions.jsonl")
    assert line["merchant_id"] == "103" and line["prompt"] == "linen dress"
    assert [c["image"] for c in line["candidates"]] == [f"images/{i}.png" for i in ids]
    assert [c["selected"] for c in line["candidates"]] == [True, False, True]
    assert f"session {line['session_id']}, 2 of 3 picked" in status
