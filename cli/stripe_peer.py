"""The local Stripe peer that ``billing dev`` runs when there is no Stripe key: localstripe.

``python -m cli.stripe_peer --port P --state FILE --webhook-url URL`` with the webhook's
signing secret in ``BILLING_STRIPE_WEBHOOK_SECRET`` (an argument would show in ``ps``).
Three things differ from localstripe's own command, each for ``billing dev``'s sake:

- it listens on 127.0.0.1 only (localstripe's command takes every interface);
- its state lives in the data directory, not in ``/tmp/localstripe.pickle``, which every
  localstripe on the machine shares: the customers, intents and plans our database names
  are still there after a restart;
- it registers our webhook itself on every start, so a peer restarted by the supervisor
  keeps sending its events (localstripe holds webhooks in memory only).

localstripe is an optional dependency (the ``localstripe`` extra): this module is only ever
run as the peer's own process, never imported by the rest of the CLI.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

from aiohttp import web
from localstripe import resources, server, webhooks

WEBHOOK_ID = "billing-dev"
_state: Path | None = None


def _load(store: resources.Store) -> None:
    assert _state is not None
    try:
        with _state.open("rb") as fh:
            saved = pickle.load(fh)  # noqa: S301 (our own file, written below)
    except FileNotFoundError:
        return
    store.clear()
    store.update(saved)


def _dump(store: resources.Store) -> None:
    assert _state is not None
    tmp = _state.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(store, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(_state)  # a reader (or a crash) never sees half a file


def main(argv: list[str] | None = None) -> None:
    """Run the peer until it is stopped."""
    global _state
    parser = argparse.ArgumentParser(prog="python -m cli.stripe_peer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--webhook-url", required=True)
    args = parser.parse_args(argv)
    _state = args.state
    _state.parent.mkdir(parents=True, exist_ok=True)
    # localstripe's store writes itself to a fixed path; these write it where we say.
    resources.Store.try_load_from_disk = _load  # type: ignore[method-assign]
    resources.Store.dump_to_disk = _dump  # type: ignore[method-assign]
    resources.store.try_load_from_disk()
    webhooks.register_webhook(WEBHOOK_ID, args.webhook_url,
                              os.environ["BILLING_STRIPE_WEBHOOK_SECRET"], None)
    web.run_app(server.app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
