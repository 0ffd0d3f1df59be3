"""The merchant's page in headless Chromium (Playwright, the system's Chromium): pick a merchant, type a
prompt, click two candidates, record; the session is in sessions.jsonl with exactly those picks."""

import pytest

from tests.helpers import read_jsonl
from tests.serve.conftest import Server, add_token

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


def test_with_a_merchant_token_the_page_asks_for_it_and_offers_only_that_merchant(shop, tmp_path, chromium):
    token = add_token(shop, "104")
    with Server(shop, None) as server:
        page = chromium.new_page()
        page.goto(server.url("/"))
        page.wait_for_selector("#signin", state="visible")
        assert "needs your token" in page.text_content("#status")
        assert page.eval_on_selector_all("#merchant option", "options => options.length") == 0
        page.fill("#token", token)
        page.click("#use-token")
        page.wait_for_selector("#merchant option[value='104']", state="attached")
        assert page.eval_on_selector_all("#merchant option", "options => options.map(o => o.value)") == ["104"]
        page.fill("#prompt", "linen dress")
        page.fill("#n", "2")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.candidate img').length === 2")
        # the images come with the token (fetched, then shown from blob: URLs)
        page.wait_for_function("[...document.querySelectorAll('.candidate img')].every(i => i.complete && i.naturalWidth)")
        page.query_selector_all(".candidate")[1].click()
        page.click("#record")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Recorded')")
        status = page.text_content("#status")
        page.close()
    [line] = read_jsonl(shop / "logs" / "sessions.jsonl")
    assert line["merchant_id"] == "104" and line["recorded_by"] == token.partition(".")[0]
    assert [c["selected"] for c in line["candidates"]] == [False, True]
    assert status.endswith(f"session {line['session_id']}, 1 of 2 picked.")  # no path for a merchant
