"""``perfusion token add|list|revoke``: the per-merchant tokens ``perfusion serve`` checks (``serving/tokens.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

from perfusion_cli.cli import context
from perfusion_cli.cli.console import boundary, console, fail, say, table
from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.records import RowError
from perfusion_cli.errors import DataError
from perfusion_cli.serving.tokens import TokenFile

app = typer.Typer(no_args_is_help=True, help="Per-merchant tokens for `perfusion serve`: each acts for one merchant.")


def _tokens(ctx: typer.Context) -> TokenFile:
    return TokenFile(context.workspace(ctx).tokens)


@app.command("add")
@boundary
def add_command(ctx: typer.Context, merchant_id: Annotated[str, typer.Argument(
        help="The merchant the token acts for (its id as in the logs).", show_default=False)]) -> None:
    """Make a token for one merchant and print it once, as the last line (only a salted hash is kept)."""
    try:
        merchant = canonical_id(merchant_id, "MERCHANT_ID")
    except RowError as exc:
        raise fail(exc.detail) from None
    tokens = _tokens(ctx)
    secret = tokens.add(merchant)
    data = context.workspace(ctx).data
    from perfusion_cli.data.merchants import read_merchants  # numpy: only here, not for --help

    try:
        known = read_merchants(data)
    except DataError:  # no prepared data yet: nothing to compare with
        known = None
    if known is not None and merchant not in known:
        say(f"note: merchant {merchant!r} is not in {data}: its requests need its profile (a cold start)")
    say(f"token {secret.partition('.')[0]} for merchant {merchant!r} in {tokens.path}; it is shown once — "
        f"give it to the merchant (Authorization: Bearer TOKEN):")
    typer.echo(secret)


@app.command("list")
@boundary
def list_command(ctx: typer.Context) -> None:
    """Tokens: id, merchant, when made, whether revoked (never a secret)."""
    tokens = _tokens(ctx)
    rows = tokens.rows()
    if not rows:
        say(f"no tokens in {tokens.path} (perfusion token add MERCHANT_ID makes one)")
        return
    console.print(table(f"tokens in {tokens.path}", ["id", "merchant", "created", "revoked"],
                        [[r["id"], r["merchant_id"], r["created"], r.get("revoked", "")] for r in rows]))


@app.command("revoke")
@boundary
def revoke_command(ctx: typer.Context, token_id: Annotated[str, typer.Argument(
        help="The token's id (the part before the dot; `perfusion token list` shows it).", show_default=False)]) -> None:
    """End a token; a running server refuses it from its next request."""
    row = _tokens(ctx).revoke(token_id.partition(".")[0])
    say(f"revoked token {row['id']} (merchant {row['merchant_id']!r}) at {row['revoked']}")
