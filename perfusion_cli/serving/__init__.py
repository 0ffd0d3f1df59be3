"""``perfusion serve``: the merchant loop — candidates over HTTP, picks recorded as raw logs (optional extra)."""
