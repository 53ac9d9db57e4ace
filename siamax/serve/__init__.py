"""``siamax serve``: verification and gallery search over HTTP (Starlette on uvicorn), a thin layer over
``commands.load_model``, the one route from a file to the model (``uploads``), ``siamax.embed`` /
``score_embeddings`` and ``siamax.Index`` (``gallery``). ``app.py``: the routes and the guard;
``batcher.py``: requests that arrive together share one device call. docs/serve.md says how to use it."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
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


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one server process needs to serve (picklable: the worker processes get a copy)."""

    model_path: str
    index: str | None
    token: str | None
    limits: Limits
    max_batch: int
    wait_s: float
    timeout_s: float
    access_log: bool


def serve(model_path, *, index=None, host="127.0.0.1", port=8000, token_file=None, insecure=False,
          limits: Limits | None = None, max_batch=32, wait_s=0.002, timeout_s=30.0,
          access_log=False, workers=1) -> None:  # fmt: skip
    """Run the server until SIGINT / SIGTERM (uvicorn's graceful shutdown: requests in flight finish).

    ``workers`` > 1: that many server processes (each with the model and the gallery, which they keep
    in step: ``gallery.Gallery``) accept on one socket, so that the Python work of many requests (HTTP,
    multipart, decoding) runs on as many cores instead of under one interpreter lock."""
    limits = limits or Limits()
    token = read_token(token_file)
    check_access(host, token, insecure)
    if workers < 1:
        raise InputError(f"--workers must be 1 or more, got {workers}")
    settings = Settings(str(model_path), None if index is None else str(index), token, limits, max_batch, wait_s,
                        timeout_s, access_log)  # fmt: skip
    if workers == 1:
        server = _server(settings)  # the model's and the gallery's errors, before the port is taken
    sock = _bind(host, port)
    what = f"{model_path} on http://{host}:{sock.getsockname()[1]}" + ("" if token else " (no token)")
    stopped_by = []
    # uvicorn re-raises the signal it stopped on once it has finished the requests in flight, with the
    # handlers it found; these take it, so a graceful stop exits 0 (as a process manager expects)
    found = {sig: signal.signal(sig, lambda sig, _: stopped_by.append(sig)) for sig in STOP_SIGNALS}
    try:
        if workers == 1:
            print(f"serving {what}", flush=True)
            server.run(sockets=[sock])
        else:
            _supervise(settings, sock, workers, stopped_by, what)
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)
    if stopped_by:
        print(f"stopped by {signal.Signals(stopped_by[-1]).name}; requests in flight were answered", flush=True)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here, so that a port in use is one error line, not uvicorn's exit."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def _server(settings: Settings, on_ready=None):
    """A uvicorn server of the app of ``settings``: the model loaded, the gallery opened, not yet running."""
    import uvicorn  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top

    from siamax import commands  # pylint: disable=g-import-not-at-top
    from siamax.serve.app import create_app  # pylint: disable=g-import-not-at-top
    from siamax.serve.gallery import Gallery  # pylint: disable=g-import-not-at-top

    Image.MAX_IMAGE_PIXELS = settings.limits.max_pixels  # PIL's own decompression-bomb guard, at the same limit
    model = commands.load_model(settings.model_path)
    gallery = None if settings.index is None else Gallery(settings.index, model.params)
    app = create_app(model, gallery, token=settings.token, limits=settings.limits, max_batch=settings.max_batch,
                     wait_s=settings.wait_s, timeout_s=settings.timeout_s, warmup=True, on_ready=on_ready)  # fmt: skip
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=int(settings.timeout_s) + 1,
                            lifespan="on", access_log=settings.access_log)  # fmt: skip
    return uvicorn.Server(config)


def _worker(settings: Settings, sock: socket.socket, ready, number: int) -> None:
    """One server process of ``--workers`` (multiprocessing's spawn): serves until SIGTERM / SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent too, which stops us by SIGTERM
    _die_with_parent()
    try:
        server = _server(settings, on_ready=lambda: ready.put((number, None)))
    except Exception as e:  # noqa: BLE001  told to the parent, which says it and stops
        ready.put((number, f"{type(e).__name__}: {e}"))
        return
    for sig in STOP_SIGNALS:  # uvicorn re-raises the signal it stopped on: a graceful stop exits 0
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])


def _die_with_parent() -> None:
    """SIGTERM this process when the parent dies (even by kill -9): no server is left behind unwatched."""
    import ctypes  # pylint: disable=g-import-not-at-top

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (AttributeError, OSError):  # not Linux: the parent's stop() still stops the workers
        return
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(settings: Settings, sock: socket.socket, workers: int, stopped_by: list, what: str) -> None:
    """Start ``workers`` server processes, say so once all are ready, restart one that dies, and on
    SIGTERM / SIGINT stop them all gracefully (each finishes its requests in flight)."""
    import multiprocessing  # pylint: disable=g-import-not-at-top
    from multiprocessing import connection  # pylint: disable=g-import-not-at-top

    ctx = multiprocessing.get_context("spawn")  # JAX's threads do not survive a fork
    ready = ctx.Queue()

    def start(n: int):
        proc = ctx.Process(target=_worker, args=(settings, sock, ready, n), name=f"siamax-serve-{n}")
        proc.start()
        return proc

    procs = {n: start(n) for n in range(workers)}
    waiting, announced = set(procs), False
    try:
        while not stopped_by:
            while not ready.empty():
                n, error = ready.get()
                if error is not None:
                    raise InputError(f"server process {n} could not start: {error}")
                waiting.discard(n)
            if not waiting and not announced:
                print(f"serving {what} with {workers} server processes", flush=True)
                announced = True
            connection.wait([p.sentinel for p in procs.values()], timeout=0.2)
            for n, proc in list(procs.items()):
                if proc.exitcode is not None and not stopped_by:
                    if not announced:
                        raise InputError(f"server process {n} exited with code {proc.exitcode} while starting")
                    print(f"server process {n} exited with code {proc.exitcode}; starting a new one", flush=True)
                    procs[n] = start(n)
    finally:
        for proc in procs.values():
            if proc.exitcode is None:
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for proc in procs.values():
            proc.join(settings.timeout_s + 10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
