"""``perfusion serve``'s JSON API against a real server: candidates, images, picks recorded once, cold
start, the limits and the token, each bad request refused with its exact message."""

import json
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from tests.helpers import read_jsonl
from tests.serve.conftest import Server

PROMPT = "linen dress"


@pytest.fixture(scope="module")
def server(serve_workspace, tmp_path_factory):
    logs = tmp_path_factory.mktemp("api") / "logs"
    with Server(serve_workspace, logs, "--max-n", 6) as running:
        yield running


def _generate(server, **body):
    return httpx.post(server.url("/v1/generate"), json={"merchant_id": "102", "prompt": PROMPT, **body},
                      headers=server.headers(), timeout=120)


def _record(server, answer, session_id, picks=(0,), **changes):
    ids = [c["id"] for c in answer["candidates"]]
    body = {"session_id": session_id, "merchant_id": answer["merchant_id"], "prompt": answer["prompt"],
            "candidates": ids, "selected": [ids[i] for i in picks], **changes}
    return httpx.post(server.url("/v1/sessions"), json=body, headers=server.headers(), timeout=30)


def test_candidates_come_best_first_with_their_images_and_seeds(server, tmp_path):
    response = _generate(server, n=3, seed=7)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["merchant_source"] == "prepared data" and answer["reranked"] is True
    scores = [c["score"] for c in answer["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert sorted(c["seed"] for c in answer["candidates"]) == [7, 8, 9]
    for candidate in answer["candidates"]:
        image = httpx.get(server.url(candidate["url"]))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        (tmp_path / "x.png").write_bytes(image.content)
        assert Image.open(tmp_path / "x.png").size == (64, 64)
    # the same seed gives the same images (the scores say so without comparing pixels)
    again = _generate(server, n=3, seed=7).json()
    assert [c["score"] for c in again["candidates"]] == pytest.approx(scores, abs=1e-4)
    info = httpx.get(server.url("/v1/info")).json()
    assert info["versions"]["perfusion"] and info["reward_model"].endswith("rm") and info["token_required"] is False


def test_a_pick_is_recorded_once_in_the_raw_log_format(server):
    answer = _generate(server, n=3).json()
    first = _record(server, answer, "api-once", picks=(0, 2))
    assert first.status_code == 200 and first.json()["recorded"] is True, first.text
    retry = _record(server, answer, "api-once", picks=(0, 2))
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    other = _record(server, answer, "api-once", picks=(1,))
    assert other.status_code == 409
    assert other.json()["detail"] == ("session_id 'api-once' is already recorded with other candidates, picks, "
                                      "merchant or prompt")
    lines = [r for r in read_jsonl(server.logs / "sessions.jsonl") if r["session_id"] == "api-once"]
    assert len(lines) == 1
    [line] = lines
    assert line["merchant_id"] == "102" and line["prompt"] == PROMPT
    assert [c["selected"] for c in line["candidates"]] == [True, False, True]
    for candidate, shown in zip(line["candidates"], answer["candidates"]):
        assert candidate["image"] == f"images/{shown['id']}.png"
        assert (server.logs / candidate["image"]).read_bytes() == httpx.get(server.url(shown["url"])).content
    merchants = {r["merchant_id"]: r for r in read_jsonl(server.logs / "merchants.jsonl")}
    prepared = {r["merchant_id"]: r for r in read_jsonl(server.workspace / "data" / "merchant_table.jsonl")}
    assert merchants["102"] == {"merchant_id": "102", **prepared["102"]["features"]}


def test_an_unknown_merchant_is_404_unless_its_profile_comes_along(server):
    response = _generate(server, merchant_id="newshop")
    assert response.status_code == 404
    assert response.json()["detail"] == ("unknown merchant 'newshop': not in the prepared data; send its profile "
                                         "as \"features\" for a cold start")
    profile = {"category": "dress", "style": "bohemian", "price_level": 35}
    answer = _generate(server, merchant_id="newshop", n=2, features=profile).json()
    assert answer["merchant_source"] == "cold start: features"
    assert _record(server, answer, "cold-1").status_code == 200
    merchants = {r["merchant_id"]: r for r in read_jsonl(server.logs / "merchants.jsonl")}
    assert merchants["newshop"] == {"merchant_id": "newshop", "category": "dress", "style": "bohemian",
                                    "price_level": 35.0}


@pytest.mark.parametrize("body, status, detail", [
    ({"n": 0}, 422, "n must be in 1..6, got 0"),
    ({"n": 7}, 422, "n must be in 1..6, got 7"),
    ({"prompt": "x" * 501}, 422, "prompt is longer than 500 characters"),
    ({"prompt": "   "}, 422, "prompt must not be empty"),
    ({"merchant_id": "m" * 129}, 422, "field 'merchant_id' is longer than 128 characters"),
    ({"merchant_id": "zz", "features": {"colour": "red"}}, 422,
     "features: unknown feature 'colour' (the model knows: category, followers, price_level, region, "
     "shop_age_years, style)"),
    ({"merchant_id": "zz", "features": {"price_level": "cheap"}}, 422, "features: price_level is numeric, got 'cheap'"),
])
def test_a_bad_generate_request_is_refused_with_its_reason(server, body, status, detail):
    response = _generate(server, **body)
    assert response.status_code == status and response.json()["detail"] == detail, response.text


def test_unknown_keys_and_oversized_bodies_are_refused(server):
    response = _generate(server, colour="red")
    assert response.status_code == 422 and "colour" in response.text
    big = json.dumps({"merchant_id": "102", "prompt": "x" * 70_000})
    response = httpx.post(server.url("/v1/generate"), content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["detail"] == "the request body is over 65536 bytes"

    def chunks():  # no Content-Length: read ahead up to the limit, then refused
        for _ in range(20):
            yield b"x" * 4096

    response = httpx.post(server.url("/v1/generate"), content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_image_ids_are_opaque(server):
    for name in ("..%2F..%2Fdata%2Fmanifest.json", "0" * 32, "G" * 32, "a" * 31):
        assert httpx.get(server.url(f"/v1/images/{name}")).status_code == 404


@pytest.mark.parametrize("change, detail", [
    ({"selected": []}, "select at least one candidate and leave at least one"),
    ("all", "select at least one candidate and leave at least one"),
    ({"selected": ["f" * 32]}, "\"selected\" must name distinct ids from \"candidates\""),
    ("unknown", "unknown candidate id 'ffffffffffffffffffffffffffffffff': not an image this server generated"),
    ({"prompt": "wool hoodie"}, "was generated for another prompt"),
    ({"merchant_id": "103"}, "not an image this server generated for merchant '103'"),
    ("twice", "a candidate id appears twice in \"candidates\""),
])
def test_a_session_that_does_not_match_what_was_shown_is_refused(server, change, detail):
    answer = _generate(server, n=2).json()
    ids = [c["id"] for c in answer["candidates"]]
    if isinstance(change, str):
        change = {"all": {"selected": ids}, "unknown": {"candidates": [ids[0], "f" * 32]},
                  "twice": {"candidates": [ids[0], ids[0], ids[1]]}}[change]
    response = _record(server, answer, "bad-session", **change)
    assert response.status_code == 422 and detail in response.json()["detail"], response.text
    assert all(r["session_id"] != "bad-session" for r in read_jsonl(server.logs / "sessions.jsonl"))


def test_with_the_operator_token_every_route_but_the_page_needs_it(serve_workspace, tmp_path):
    token = "t0ken-for-the-test-0123456789"
    with Server(serve_workspace, tmp_path / "logs", token=token) as server:
        body = {"merchant_id": "102", "prompt": PROMPT, "n": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            response = httpx.post(server.url("/v1/generate"), json=body, headers=headers, timeout=60)
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"] == "Bearer"
            for path in ("/v1/info", "/v1/merchants", "/v1/images/" + "a" * 32):
                assert httpx.get(server.url(path), headers=headers).status_code == 401
            response = httpx.post(server.url("/v1/sessions"), json={}, headers=headers)
            assert response.status_code == 401
        assert httpx.get(server.url("/healthz")).status_code == httpx.get(server.url("/")).status_code == 200
        answer = _generate(server, n=2)
        assert answer.status_code == 200
        assert _record(server, answer.json(), "with-token").status_code == 200
        info = httpx.get(server.url("/v1/info"), headers=server.headers()).json()
        assert info["token_required"] is True and info["merchant"] is None and info["merchant_tokens"] == 0
        assert httpx.get(server.url(answer.json()["candidates"][0]["url"]), headers=server.headers()).status_code == 200
    [line] = read_jsonl(tmp_path / "logs" / "sessions.jsonl")
    assert line["recorded_by"] == "operator"


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
    (["--host", "0.0.0.0", "--token", "short"], "--token must be at least 16 characters"),
    (["--max-n", "0"], "--max-n must be ≥ 1, got 0"),
])
def test_serve_refuses_to_start_unsafely(serve_workspace, tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "perfusion_cli", "--workdir", str(serve_workspace), "serve",
                             "--logs", str(tmp_path / "logs"), *args], capture_output=True, text=True, timeout=60)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and message in text and "Traceback" not in text, text
    assert not (tmp_path / "logs").exists()


def test_defaults_come_from_the_workspace_and_it_listens_on_loopback(serve_workspace):
    with Server(serve_workspace, None) as server:
        info = httpx.get(server.url("/v1/info")).json()
        printed = server.text()
    assert info["logs"] == str(serve_workspace / "logs") and info["model"] == str(serve_workspace / "runs" / "gen")
    assert info["reward_model"] == str(serve_workspace / "runs" / "rm") and info["data"] == str(serve_workspace / "data")
    assert f"serving on http://127.0.0.1:{server.port}" in printed


def test_a_request_that_outlives_its_timeout_gets_504_and_the_server_goes_on(serve_workspace, tmp_path):
    with Server(serve_workspace, tmp_path / "logs", "--request-timeout-s", 0.05, "--steps", 30) as server:
        response = _generate(server, n=8)
        assert response.status_code == 504
        assert response.json()["detail"].startswith("no answer within 0.05 s (request_timeout_s)")
        assert httpx.get(server.url("/healthz")).status_code == 200


def test_a_client_that_sends_its_request_slowly_is_cut_off(serve_workspace, tmp_path):
    """Third hostile pass: half-sent headers or bodies held a connection for ever."""
    import socket
    import time

    with Server(serve_workspace, tmp_path / "logs", "--read-timeout-s", 1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            started = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 6
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
            started = time.monotonic()
            assert idle.recv(1024) == b"" and time.monotonic() - started < 6  # connected, never said a word
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"merchant_id\": ")  # 15 of 100 bytes, then nothing
            answer = b""
            while chunk := slow.recv(4096):  # headers and body may come in separate segments; then it closes
                answer += chunk
            answer = answer.decode()
            assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s (read_timeout_s)" in answer
        assert httpx.get(server.url("/healthz")).status_code == 200  # and the server goes on
        assert httpx.get(server.url("/v1/info")).json()["limits"]["read_timeout_s"] == 1
        assert not (tmp_path / "logs" / "sessions.jsonl").exists()
