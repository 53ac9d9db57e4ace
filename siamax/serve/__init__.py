"""``siamax serve``: verification and gallery search over HTTP (Starlette on uvicorn), a thin layer over
``commands.load_model``, the one route from a file to the model (``uploads``), ``siamax.embed`` /
``score_embeddings`` and ``siamax.Index`` (``gallery``). ``app.py``: the routes and the guard;
``batcher.py``: requests that arrive together share one device call. docs/serve.md says how to use it."""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

from siamax.errors import InputError
from siamax.serve.uploads import Limits

MIN_TOKEN = 16
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # uvicorn's graceful shutdown: requests in flight finish


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def read_token(path: str | Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise InputError(f"--token-file {path} cannot be read: {e.strerror or e}") from e
    if len(token) < MIN_TOKEN or not token.isascii() or not token.isprintable() or " " in token:
        raise InputError(
            f"--token-file {path}: the token must be {MIN_TOKEN} or more printable ASCII characters without spaces; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE"
        )
    return token


def check_access(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless told (--insecure)."""
    if token is None and not insecure and not is_loopback(host):
        raise InputError(
            f"--host {host} listens beyond this machine, and no --token-file was given: anyone who can reach it "
            "could use the model and change the gallery. Give --token-file FILE, or --insecure to do it anyway"
        )


def serve(model_path, *, index=None, host="127.0.0.1", port=8000, token_file=None, insecure=False,
          limits: Limits | None = None, max_batch=32, wait_s=0.002, timeout_s=30.0,
          access_log=False) -> None:  # fmt: skip
    """Run the server until SIGINT / SIGTERM (uvicorn's graceful shutdown: requests in flight finish)."""
    limits = limits or Limits()
    token = read_token(token_file)
    check_access(host, token, insecure)
    import uvicorn  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top

    from siamax import commands  # pylint: disable=g-import-not-at-top
    from siamax.serve.app import create_app  # pylint: disable=g-import-not-at-top
    from siamax.serve.gallery import Gallery  # pylint: disable=g-import-not-at-top

    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL's own decompression-bomb guard, at the same limit
    model = commands.load_model(model_path)
    gallery = None if index is None else Gallery(index, model.params)
    try:  # bound here, so that a port in use is one error line, not uvicorn's exit
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    app = create_app(model, gallery, token=token, limits=limits, max_batch=max_batch, wait_s=wait_s,
                     timeout_s=timeout_s, warmup=True)  # fmt: skip
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=int(timeout_s) + 1, lifespan="on",
                            access_log=access_log)  # fmt: skip
    print(
        f"serving {model_path} on http://{host}:{sock.getsockname()[1]}" + ("" if token else " (no token)"), flush=True
    )
    # uvicorn re-raises the signal it stopped on once it has finished the requests in flight, with the
    # handlers it found; these take it, so a graceful stop exits 0 (as a process manager expects)
    stopped_by = []
    found = {sig: signal.signal(sig, lambda sig, _: stopped_by.append(sig)) for sig in STOP_SIGNALS}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)
    if stopped_by:
        print(f"stopped by {signal.Signals(stopped_by[-1]).name}; requests in flight were answered", flush=True)
