"""Per-merchant tokens against a real server on 127.0.0.1: every endpoint checks who asks, a merchant token
acts for its merchant only (403 for another's id, 404 for another's image), no path reaches a merchant,
a refused request writes nothing, a revocation holds without a restart, and the tokens file keeps no secret."""

import concurrent.futures
import stat
import time

import httpx
import pytest

from tests.helpers import read_jsonl
from tests.serve.conftest import Server, add_token, perfusion

PROMPT = "linen dress"
A, B = "102", "103"


def bearer(token):
    return {"Authorization": f"Bearer {token}"} if token else {}


def generate(server, token, merchant, **body):
    return httpx.post(server.url("/v1/generate"), json={"merchant_id": merchant, "prompt": PROMPT, "n": 2, **body},
                      headers=bearer(token), timeout=120)


def record(server, token, answer, session_id, merchant=None):
    ids = [c["id"] for c in answer["candidates"]]
    body = {"session_id": session_id, "merchant_id": merchant or answer["merchant_id"], "prompt": answer["prompt"],
            "candidates": ids, "selected": ids[:1]}
    return httpx.post(server.url("/v1/sessions"), json=body, headers=bearer(token), timeout=30)


def test_token_commands_print_the_secret_once_and_keep_only_its_salted_hash(shop):
    token = add_token(shop, "  102 ")
    token_id, _, secret = token.partition(".")
    path = shop / "serve" / "tokens.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret and secret not in path.read_text() and len(secret) >= 40
    [row] = read_jsonl(path)
    assert row["id"] == token_id and row["merchant_id"] == "102" and set(row) == {"id", "merchant_id", "created",
                                                                                  "salt", "sha256"}
    code, out, _ = perfusion(shop, "token", "list")
    assert code == 0 and token_id in out and "102" in out and secret not in out
    code, out, _ = perfusion(shop, "token", "revoke", token_id)
    assert code == 0 and f"revoked token {token_id} (merchant '102')" in out
    assert "revoked" in read_jsonl(path)[0]
    code, _, err = perfusion(shop, "token", "revoke", "feedfacecafe")
    assert code == 1 and f"no token 'feedfacecafe' in {path} (tokens: {token_id})" in err
    code, _, err = perfusion(shop, "token", "add", "bad\x1b[31mid")
    assert code == 1 and "field 'MERCHANT_ID' holds a control character" in err and "Traceback" not in err


def test_every_endpoint_checks_who_asks_and_a_merchant_acts_only_for_itself(shop):
    token_a, token_b = add_token(shop, A), add_token(shop, B)
    id_a, id_b = token_a.partition(".")[0], token_b.partition(".")[0]
    logs = shop / "logs"
    with Server(shop, None) as server:
        # open: the page's shell and the health check
        assert httpx.get(server.url("/healthz")).status_code == 200
        assert httpx.get(server.url("/")).status_code == 200
        # every other route needs a token, and says so
        for token, reason in ((None, "this server needs a token"), ("nope", "this token is unknown or revoked"),
                              (f"{id_a}.wrong-secret", "this token is unknown or revoked")):
            for method, path in (("GET", "/v1/info"), ("GET", "/v1/merchants"), ("GET", "/v1/images/" + "a" * 32),
                                 ("POST", "/v1/generate"), ("POST", "/v1/sessions")):
                response = httpx.request(method, server.url(path), headers=bearer(token), json={}, timeout=30)
                assert response.status_code == 401 and reason in response.json()["detail"], (method, path, response.text)
        # a merchant sees its own id, and no path on the server
        assert httpx.get(server.url("/v1/merchants"), headers=bearer(token_a)).json() == {"merchants": [A]}
        info = httpx.get(server.url("/v1/info"), headers=bearer(token_a))
        assert info.json()["merchant"] == A and info.json()["token_required"] is True
        assert str(shop) not in info.text and str(shop.resolve()) not in info.text and "/" + "runs" not in info.text
        # another merchant's id in a body: 403; its images: 404, the same answer as an image that does not exist
        refused = generate(server, token_a, B)
        assert refused.status_code == 403 and refused.json()["detail"] == f"this token acts for merchant '{A}' only"
        answer_b = generate(server, token_b, B).json()
        image_b = answer_b["candidates"][0]["url"]
        assert httpx.get(server.url(image_b), headers=bearer(token_b)).status_code == 200
        hidden = httpx.get(server.url(image_b), headers=bearer(token_a))
        missing = httpx.get(server.url("/v1/images/" + "0" * 32), headers=bearer(token_a))
        assert hidden.status_code == missing.status_code == 404 and hidden.json() == missing.json()
        # recording another merchant's picks: 403 under its id, 422 ("unknown") under one's own
        assert record(server, token_a, answer_b, "steal").status_code == 403
        mixed = record(server, token_a, answer_b, "steal-2", merchant=A)
        assert mixed.status_code == 422 and "unknown candidate id" in mixed.json()["detail"]
        assert not (logs / "sessions.jsonl").exists()  # nothing refused was written
        # a merchant records its own picks: the line says which token recorded it; the answer names no path
        answer_a = generate(server, token_a, A).json()
        recorded = record(server, token_a, answer_a, "mine")
        assert recorded.status_code == 200 and "logs" not in recorded.json() and str(shop) not in recorded.text
        assert record(server, token_b, answer_b, "theirs").status_code == 200
        by_session = {line["session_id"]: line for line in read_jsonl(logs / "sessions.jsonl")}
        assert {s: (l["merchant_id"], l["recorded_by"]) for s, l in by_session.items()} == {
            "mine": (A, id_a), "theirs": (B, id_b)}
        # a revocation holds from the next request, without a restart
        code, _, err = perfusion(shop, "token", "revoke", id_b)
        assert code == 0, err
        deadline, status = time.monotonic() + 5, 200
        while time.monotonic() < deadline and status != 401:
            status = httpx.get(server.url("/v1/merchants"), headers=bearer(token_b)).status_code
            time.sleep(0.1)
        assert status == 401
        assert httpx.get(server.url("/v1/merchants"), headers=bearer(token_a)).status_code == 200
    assert len(read_jsonl(logs / "sessions.jsonl")) == 2


def test_the_operator_token_acts_for_every_merchant_beside_merchant_tokens(shop):
    operator = "operator-token-0123456789abcdef"
    token_a = add_token(shop, A)
    with Server(shop, None, token=operator) as server:
        merchants = httpx.get(server.url("/v1/merchants"), headers=bearer(operator)).json()["merchants"]
        assert A in merchants and B in merchants and len(merchants) > 2
        info = httpx.get(server.url("/v1/info"), headers=bearer(operator)).json()
        assert info["merchant"] is None and info["merchant_tokens"] == 1 and info["logs"] == str(shop / "logs")
        answer = generate(server, operator, B).json()
        assert httpx.get(server.url(answer["candidates"][0]["url"]), headers=bearer(token_a)).status_code == 404
        reply = record(server, operator, answer, "by-operator")
        assert reply.status_code == 200 and reply.json()["logs"] == str(shop / "logs" / "sessions.jsonl")
    [line] = read_jsonl(shop / "logs" / "sessions.jsonl")
    assert line["recorded_by"] == "operator" and line["merchant_id"] == B


def test_a_merchant_burst_is_bounded_and_does_not_delay_another_merchant(shop):
    """One request at a time (--max-batch-images 1): merchant A sends 6 at once, B one while they wait; B is run
    next after the request in progress — the order of service, as the batcher records it."""
    token_a, token_b = add_token(shop, A), add_token(shop, B)
    operator = "operator-token-0123456789abcdef"
    with Server(shop, None, "--max-batch-images", 1, "--max-pending-per-merchant", 6, "--steps", 100,
                token=operator) as server:
        with httpx.Client(timeout=120) as client:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                burst = [pool.submit(generate, server, token_a, A, n=1) for _ in range(6)]
                deadline = time.monotonic() + 60
                while client.get(server.url("/v1/info"), headers=bearer(operator)).json()["queue"]["waiting"] < 5:
                    assert time.monotonic() < deadline, "the burst never queued"
                    time.sleep(0.02)
                over = generate(server, token_a, A, n=1)  # a seventh while six are pending
                single = pool.submit(generate, server, token_b, B, n=1)
                answers = [f.result() for f in burst] + [single.result()]
            assert over.status_code == 429 and over.headers["Retry-After"] == "1"
            assert "max_pending_per_merchant" in over.json()["detail"]
            assert all(a.status_code == 200 for a in answers)
            assert "served" not in client.get(server.url("/v1/info"), headers=bearer(token_a)).json()["queue"]
            order = client.get(server.url("/v1/info"), headers=bearer(operator)).json()["queue"]["served"]
    # A's first request was running when B's came: B is served at most one batch later, not after A's burst
    assert order.index(B) <= 2 and order.count(A) == 6, order
