"""``perfusion serve``: generation over HTTP, a page for merchants, and their picks recorded as raw logs."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import boundary, fail, say
from perfusion_cli.cli.flags import routes

LOOPBACK_NAMES = {"localhost"}
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

ROUTES = routes("serve", local=("model", "logs", "data", "token", "recipe"), generate=("steps", "device", "reward"))


@boundary
def serve_command(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option("--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward model that scores and reranks the candidates (default <workspace>/runs/rm when it "
                         "exists).")] = None,
    logs: Annotated[Optional[Path], typer.Option(
        "--logs", help="Raw-logs folder the picks are appended to (default <workspace>/logs).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default 8000; 0 picks a free one).")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="PERFUSION_TOKEN", show_envvar=True,
        help="The operator's token, valid for every merchant; with it (or any `perfusion token` in the "
             "workspace) every request but / and /healthz needs a token.")] = None,
    max_n: Annotated[Optional[int], typer.Option("--max-n", help="Most candidates one request may ask for.")] = None,
    queue_size: Annotated[Optional[int], typer.Option(
        "--queue-size", help="Requests that may wait; beyond it: 503 with Retry-After.")] = None,
    max_pending_per_merchant: Annotated[Optional[int], typer.Option(
        "--max-pending-per-merchant", help="Requests one merchant may have waiting or running; beyond it: 429 "
                                           "with Retry-After.")] = None,
    max_batch_images: Annotated[Optional[int], typer.Option(
        "--max-batch-images", help="Images one micro-batched pipeline call gathers (1: one request at a time).")] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option(
        "--max-wait-ms", help="How long a request waits for others to batch with.")] = None,
    request_timeout_s: Annotated[Optional[float], typer.Option(
        "--request-timeout-s", help="A generate request unanswered by then gets 504.")] = None,
    read_timeout_s: Annotated[Optional[float], typer.Option(
        "--read-timeout-s", help="A request's headers, then its body, must arrive within this (else the "
                                 "connection is closed, or 408).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.")] = None,
    device: options.Device = None,
    recipe: options.Recipe = None,
) -> None:
    """Serve personalized candidates over HTTP (JSON API + a page at /) and record merchants' picks in LOGS,
    in the raw-log format `perfusion prepare` reads. Needs the serve extra: pip install 'perfusion\\[serve]'."""
    config = context.section(ctx, recipe, "serve")
    generate = context.with_default_reward(ctx, context.section(ctx, recipe, "generate"))
    if token is not None and len(token) < MIN_TOKEN:
        raise fail(f"--token must be at least {MIN_TOKEN} characters (a random one: "
                   f"python -c 'import secrets; print(secrets.token_urlsafe())')")
    workspace = context.workspace(ctx)
    from perfusion_cli.serving.tokens import TokenFile

    tokens = TokenFile(workspace.tokens)
    beyond_loopback = not is_loopback(config.host)
    if beyond_loopback and token is None and not tokens.active():
        raise fail(f"refusing to listen on {config.host} without a token: anyone who reaches it could write to your "
                   f"logs — make merchant tokens (perfusion token add MERCHANT_ID), pass --token (or set "
                   f"PERFUSION_TOKEN), or keep the default --host 127.0.0.1")
    data, run = context.data_dir(ctx, data), context.generator_run(ctx, model)
    try:
        import uvicorn

        from perfusion_cli.serving.app import create_app, versions
    except ImportError as exc:
        raise fail(f"perfusion serve needs the serve extra ({exc.name} is missing): pip install 'perfusion[serve]'")
    from perfusion_cli.designer import Designer
    from perfusion_cli.serving.gallery import Gallery
    from perfusion_cli.serving.journal import SessionJournal
    from perfusion_cli.serving.studio import Studio

    generate = dataclasses.replace(generate, rerank=generate.reward is not None, cold_start="features")
    designer = Designer(run, data, generate)
    journal = SessionJournal(logs or workspace.logs)
    if journal.repair:
        say(f"repaired {journal.repair}")
    try:
        listener = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.host, config.port))
    except OSError as exc:
        journal.close()
        raise fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    bound = listener.getsockname()[1]
    info = {"versions": versions(), "model": str(run), "base_model": designer.pipeline.base_model,
            "reward_model": generate.reward, "data": str(data),
            "logs": str(journal.root), "steps": generate.steps, "device": str(designer.pipeline.device)}
    gallery = Gallery(workspace.outputs / "serve", config.keep_shown_days)
    if gallery.pruned:
        say(f"removed {gallery.pruned} candidates shown more than {config.keep_shown_days:g} days ago")
    app = create_app(Studio(designer, gallery, journal), config, token, info, tokens, guarded=beyond_loopback)
    say(f"recording picks in {journal.sessions_path} ({len(journal)} sessions so far)")
    if token is not None or tokens.exists():
        say(f"every request needs a token: {tokens.active()} merchant tokens in {tokens.path}"
            + (", and the operator's" if token is not None else ""))
    say(f"serving on http://{config.host}:{bound} (Ctrl-C stops)")
    try:
        from perfusion_cli.serving.slow_clients import header_deadline

        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                      http=header_deadline(config.read_timeout_s))).run(sockets=[listener])
    finally:
        journal.close()
