#!/usr/bin/env python
"""Bad input and faults against a live ``siamax serve``: each case's expected status, what came, and
that nothing was lost.

Servers are ``siamax serve`` subprocesses on 127.0.0.1 (``serve_load.Server``) with an untrained
``tiny`` model (only the server's behaviour is probed) and a gallery of synthetic items:

* the main server (token, ``--max-upload-mb 1 --max-pixels 1000000 --timeout 3``): truncated and
  mislabelled files, decompression-bomb headers (huge width x height in a few hundred bytes), wrong
  content types, empty bodies, missing fields, bad ``k`` and labels, over-limit uploads (413, told
  from Content-Length and from a chunked body), a stalled upload (504), tokens (401), unknown
  routes; then several threads adding and removing items at once (the gallery served and the file on
  disk must both equal what was acknowledged); then SIGTERM (exit 0);
* the command line: a non-loopback ``--host`` without a token, a short or missing token file, a
  port in use, an index of another model: exit 2 with one ``error:`` line, no traceback;
* an audio model (``--max-seconds 2``): an hour-long WAV (refused with 400 before decoding: the
  time it took is printed), a 1 s WAV whose header claims an hour (libsndfile takes the length the
  file holds: 200), too many channels, images and text sent as clips;
* ``kill -9`` of a server while threads stream additions, then a restart: the index loads and
  holds every acknowledged addition;
* a full disk: the gallery on a tmpfs of 200 KiB (``mount -t tmpfs``, as root), filled up by
  another file: an addition answers a 500 JSON, the old ``index.npz`` is unchanged, what is served
  equals what is stored, and once space is freed additions work again. Where mounting is not
  permitted, the server runs under ``RLIMIT_FSIZE`` smaller than the index (every write of it
  fails); the output says which was used.

Prints one line per case (name, expected, got, ok) and a summary; exits 1 if any case failed.
``--json PATH``: {"meta": {...}, "cases": [{name, expected, got, ok, detail}], "passed", "failed"}.

Example::

    python benchmarks/serve_faults.py --json benchmarks/results/serve_faults.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import Server, drawing, make_gallery, make_model, meta, siamax_command  # noqa: E402

CASES: list[dict] = []


def phase(name: str, fn, *args) -> None:
    """Run one group of cases; a probe that crashes is one failed case, and the others still run."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        record(f"{name}: the probe itself", "runs", type(e).__name__, False, str(e)[:300])


def record(name: str, expected, got, ok: bool, detail: str = "") -> bool:
    CASES.append({"name": name, "expected": str(expected), "got": str(got), "ok": bool(ok), "detail": detail})
    print(
        f"{'ok  ' if ok else 'FAIL'} {name:58s} expected {str(expected):10s} got {str(got):10s} {detail[:90]}",
        flush=True,
    )
    return ok


def is_json_error(r) -> bool:
    try:
        return r.headers.get("content-type", "").startswith("application/json") and set(r.json()) == {"error"}
    except ValueError:
        return False


def expect(name: str, expected, call) -> bool:
    """``call()`` -> an httpx response; ok if its status is ``expected`` (an int or a tuple of them) and, for
    an error status, the body is one JSON ``{"error": ...}``."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    try:
        r = call()
    except Exception as e:  # noqa: BLE001  a probe that crashed is a failed case, not a crashed probe
        return record(name, "|".join(map(str, allowed)), type(e).__name__, False, str(e)[:200])
    ok = r.status_code in allowed and (r.status_code < 400 or is_json_error(r))
    detail = r.text[:200].replace("\n", " ")
    if r.status_code >= 400 and not is_json_error(r):
        detail = "not a JSON {error}: " + detail
    return record(name, "|".join(map(str, allowed)), r.status_code, ok, detail)


# -- files ------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (8-bit gray) with a tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def image_bytes(size, fmt: str, fill=255) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", size, fill).save(out, format=fmt)
    return out.getvalue()


def jpeg_with_size(w: int, h: int) -> bytes:
    """A small real JPEG with its SOF0 header patched to say w x h."""
    b = bytearray(image_bytes((16, 16), "JPEG"))
    at = b.find(b"\xff\xc0")
    b[at + 5 : at + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def gif_with_size(w: int, h: int) -> bytes:
    b = bytearray(image_bytes((4, 4), "GIF"))
    b[6:10] = struct.pack("<HH", w, h)  # the logical screen
    at = b.find(b"\x2c")  # the image descriptor: left, top, width, height
    b[at + 5 : at + 9] = struct.pack("<HH", w, h)
    return bytes(b)


def wav(seconds: float, rate: int = 8000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    import soundfile

    n = int(rate * seconds)
    x = np.sin(np.arange(n) / 5).astype(np.float32)[:, None].repeat(channels, 1) * 0.5
    out = io.BytesIO()
    soundfile.write(out, x, rate, format="WAV", subtype=subtype)
    return out.getvalue()


def wav_lying(claimed_s: float, rate: int = 8000) -> bytes:
    """1 s of 16-bit audio whose RIFF and data chunk sizes claim ``claimed_s`` seconds."""
    b = bytearray(wav(1.0, rate))
    claimed = int(claimed_s * rate * 2)
    b[4:8] = struct.pack("<I", min(claimed + 36, 2**32 - 1))
    at = b.find(b"data")
    b[at + 4 : at + 8] = struct.pack("<I", min(claimed, 2**32 - 1))
    return bytes(b)


# -- the probes -----------------------------------------------------------------------------------


def cli(name: str, args: list[str], want_in: str = "") -> bool:
    try:
        p = subprocess.run(
            [*siamax_command(), *args],
            capture_output=True,
            text=True,
            timeout=300,  # noqa: S603
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return record(name, "exit 2", "timeout", False)
    err = p.stderr.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    ok = p.returncode == 2 and len(lines) == 1 and "Traceback" not in err and want_in in err
    return record(name, "exit 2", f"exit {p.returncode}", ok, (lines[0] if lines else err[-200:]))


def bad_inputs(url: str, token: str, good: bytes) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    c = httpx.Client(base_url=url, headers=auth, timeout=30)
    post = c.post

    def files(**parts):
        return {k: (f"{k}.png", v, "image/png") if isinstance(v, bytes) else v for k, v in parts.items()}

    # access
    expect("healthz without a token", 200, lambda: httpx.get(url + "/healthz"))
    expect("model with the token", 200, lambda: c.get("/v1/model"))
    expect("no Authorization header", 401, lambda: httpx.get(url + "/v1/model"))
    expect("wrong token", 401, lambda: httpx.get(url + "/v1/model", headers={"Authorization": "Bearer " + "x" * 43}))
    expect(
        "token with a suffix", 401, lambda: httpx.get(url + "/v1/model", headers={"Authorization": f"Bearer {token}x"})
    )
    expect("token without 'Bearer '", 401, lambda: httpx.get(url + "/v1/model", headers={"Authorization": token}))
    expect(
        "lowercase 'bearer'", 401, lambda: httpx.get(url + "/v1/model", headers={"Authorization": f"bearer {token}"})
    )
    expect("Basic auth instead of Bearer", 401, lambda: httpx.get(url + "/v1/model", auth=("u", token)))
    expect("wrong token on a verify", 401, lambda: httpx.post(url + "/v1/verify", files=files(a=good, b=good)))
    expect(
        "wrong token on a 2 MB upload (401 before 413)",
        401,
        lambda: httpx.post(url + "/v1/embed", files=files(file=b"\0" * 2_000_000)),
    )
    expect("wrong token on DELETE", 401, lambda: httpx.delete(url + "/v1/index/items/0123456789abcdef"))
    # good requests
    expect("verify two drawings", 200, lambda: post("/v1/verify", files=files(a=good, b=good)))
    expect("embed one drawing", 200, lambda: post("/v1/embed", files=files(file=good)))
    expect("identify k=3", 200, lambda: post("/v1/identify", files=files(file=good), data={"k": "3"}))
    expect(
        "identify k=100 (more than the classes)",
        200,
        lambda: post("/v1/identify", files=files(file=good), data={"k": "100"}),
    )
    expect(
        "a PNG sent as text/plain part (content decides)",
        200,
        lambda: post("/v1/embed", files={"file": ("x.txt", good, "text/plain")}),
    )
    # undecodable files: 415
    jpeg = image_bytes((105, 105), "JPEG", fill=200)
    expect("truncated PNG (half)", 415, lambda: post("/v1/embed", files=files(file=good[: len(good) // 2])))
    expect("PNG signature only", 415, lambda: post("/v1/embed", files=files(file=good[:8])))
    expect("PNG header, no pixel data", 415, lambda: post("/v1/embed", files=files(file=good[:33])))
    expect("truncated JPEG (half)", 415, lambda: post("/v1/embed", files=files(file=jpeg[: len(jpeg) // 2])))
    expect("JPEG header only (200 bytes)", 415, lambda: post("/v1/embed", files=files(file=jpeg[:200])))
    expect(
        "a text file named .png",
        415,
        lambda: post("/v1/embed", files={"file": ("notes.png", b"hello, I am text\n" * 20, "image/png")}),
    )
    expect(
        "HTML named .jpg",
        415,
        lambda: post("/v1/embed", files={"file": ("x.jpg", b"<html><body>hi</body></html>", "image/jpeg")}),
    )
    expect("random bytes", 415, lambda: post("/v1/embed", files=files(file=secrets.token_bytes(5000))))
    expect("GIF signature and junk", 415, lambda: post("/v1/embed", files=files(file=b"GIF89a" + b"\1" * 100)))
    expect("a WAV sent to an image model", 415, lambda: post("/v1/embed", files=files(file=wav(0.5))))
    expect("verify: b truncated, a good", 415, lambda: post("/v1/verify", files=files(a=good, b=good[:40])))
    # over the limits: 400 (pixels), 413 (bytes)
    expect(
        "PNG header 1001x1000 (just over 1e6 pixels)",
        400,
        lambda: post("/v1/embed", files=files(file=image_bytes((1001, 1000), "PNG"))),
    )
    expect(
        "PNG header 100000x100000 (bomb, ~100 bytes)",
        400,
        lambda: post("/v1/embed", files=files(file=png_header_only(100_000, 100_000))),
    )
    expect(
        "PNG header 2000x2000 (4x the limit, ~100 bytes)",
        400,
        lambda: post("/v1/embed", files=files(file=png_header_only(2000, 2000))),
    )
    expect(
        "JPEG header 60000x60000 (bomb)",
        400,
        lambda: post("/v1/embed", files=files(file=jpeg_with_size(60_000, 60_000))),
    )
    expect(
        "GIF header 65535x65535 (bomb)", 400, lambda: post("/v1/embed", files=files(file=gif_with_size(65_535, 65_535)))
    )
    expect(
        "upload of 1.5 MB > --max-upload-mb 1 (Content-Length)",
        413,
        lambda: post("/v1/embed", files=files(file=b"\0" * 1_500_000)),
    )

    def chunks():  # a well-formed start, so that only the size can refuse it
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(150):
            yield b"x" * 10_000

    expect(
        "chunked upload of 1.5 MB (no Content-Length)",
        413,
        lambda: post("/v1/embed", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}),
    )
    # malformed requests: 422
    expect("JSON body instead of multipart", 422, lambda: post("/v1/verify", json={"a": "x", "b": "y"}))
    expect("text/plain body", 422, lambda: post("/v1/verify", content=b"a b", headers={"content-type": "text/plain"}))
    expect("urlencoded form", 422, lambda: post("/v1/embed", data={"file": "abc"}))
    expect("body without a content type", 422, lambda: post("/v1/embed", content=b"\x89PNG whatever"))
    expect(
        "empty body, multipart content type",
        422,
        lambda: post("/v1/embed", content=b"", headers={"content-type": "multipart/form-data; boundary=b"}),
    )
    expect("empty body, no content type", 422, lambda: post("/v1/verify", content=b""))
    expect(
        "multipart without a boundary",
        422,
        lambda: post("/v1/embed", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"}),
    )
    expect(
        "multipart garbage",
        422,
        lambda: post(
            "/v1/embed", content=secrets.token_bytes(3000), headers={"content-type": "multipart/form-data; boundary=zz"}
        ),
    )
    expect("an empty file part", 422, lambda: post("/v1/embed", files=files(file=b"")))
    expect("verify without b", 422, lambda: post("/v1/verify", files=files(a=good)))
    expect("verify with neither file", 422, lambda: post("/v1/verify", files=files(c=good)))
    expect(
        "verify with a and b as text fields",
        422,
        lambda: post("/v1/verify", data={"a": "x", "b": "y"}, files=files(c=good)),
    )
    expect("five file parts (max 4)", 422, lambda: post("/v1/verify", files=[(f"f{i}", good) for i in range(5)]))
    expect(
        "a text field over 4096 bytes",
        422,
        lambda: post("/v1/index/items", files=files(file=good), data={"label": "x" * 5000}),
    )
    expect("identify without a file", 422, lambda: post("/v1/identify", data={"k": "3"}, files=files(x=good)))
    for k in ("0", "101", "-1", "abc", "", "1.5", "99999", "3; drop"):
        expect(f"identify k={k!r}", 422, lambda k=k: post("/v1/identify", files=files(file=good), data={"k": k}))
    expect("add without a label", 422, lambda: post("/v1/index/items", files=files(file=good)))
    expect("add with a blank label", 422, lambda: post("/v1/index/items", files=files(file=good), data={"label": "  "}))
    expect(
        "add with a 201-character label",
        422,
        lambda: post("/v1/index/items", files=files(file=good), data={"label": "y" * 201}),
    )
    expect(
        "add with a control character in the label",
        422,
        lambda: post("/v1/index/items", files=files(file=good), data={"label": "a\x07b"}),
    )
    # routes
    expect("DELETE an id that is not there", 404, lambda: c.delete("/v1/index/items/0123456789abcdef"))
    expect("DELETE a malformed id", 404, lambda: c.delete("/v1/index/items/zzz"))
    expect("DELETE a path-like id", 404, lambda: c.delete("/v1/index/items/..%2F..%2Fetc%2Fpasswd"))
    expect("thumbnail of an item that is not there", 404, lambda: c.get("/v1/index/items/0123456789abcdef/thumbnail"))
    expect("GET on a POST route", 405, lambda: c.get("/v1/verify"))
    expect("unknown route", 404, lambda: c.get("/v1/nowhere"))
    # a stalled upload: headers and 10 of 1000 bytes, then nothing (the --timeout 3 of this server)
    host, port = url.split("//")[1].split(":")
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(
                f"POST /v1/embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\nxxxx".encode()
            )
            got = ""
            while '"error"' not in got:
                data = s.recv(65536)
                if not data:
                    break
                got += data.decode(errors="replace")
        status = int(got.split()[1]) if got.startswith("HTTP/") else got[:30]
        body_ok = '{"error"' in got
    except OSError as e:
        status, body_ok = type(e).__name__, False
    dt = time.perf_counter() - t0
    record(
        "stalled upload (10 of 1000 bytes, --timeout 3)",
        504,
        status,
        status == 504 and body_ok and dt < 10,
        f"answered after {dt:.1f} s",
    )
    c.close()


def concurrent_changes(url: str, token: str, folder: Path, params, good: list[bytes]) -> None:
    """Threads adding and removing at once: served and stored galleries equal the acknowledged changes."""
    import httpx

    from siamax.index import Index
    from siamax.serve.gallery import item_id

    auth = {"Authorization": f"Bearer {token}"}
    n0 = httpx.get(url + "/v1/model", headers=auth).json()["gallery"]["items"]
    added, removed, statuses, lock = [], [], [], threading.Lock()

    def worker(t):
        with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
            mine = []
            for i in range(10):
                r = c.post(
                    "/v1/index/items", files={"file": good[(t + i) % len(good)]}, data={"label": f"conc-{t}-{i}"}
                )
                with lock:
                    statuses.append(r.status_code)
                if r.status_code == 201:
                    mine.append(r.json()["id"])
                    with lock:
                        added.append(r.json()["id"])
                if i % 3 == 2 and mine:  # remove an earlier addition of this thread now and then
                    victim = mine.pop(0)
                    r = c.delete(f"/v1/index/items/{victim}")
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            removed.append(victim)
            r = c.post("/v1/identify", files={"file": good[0]}, data={"k": "5"})
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [s for s in statuses if s not in (200, 201)]
    record(
        "6 threads x 10 adds + removes: all answered",
        "200/201",
        f"{len(bad)} other",
        not bad,
        f"{len(added)} adds, {len(removed)} removes acknowledged",
    )
    served = httpx.get(url + "/v1/model", headers=auth).json()["gallery"]["items"]
    want = n0 + len(added) - len(removed)
    record("served gallery size = acknowledged changes", want, served, served == want)
    disk = Index.load(folder, params)
    ids = {item_id(p) for p in disk.paths}
    survivors = set(added) - set(removed)
    ok = len(disk) == want and survivors <= ids and not (set(removed) & ids)
    record(
        "stored gallery = acknowledged changes",
        f"{want} items",
        f"{len(disk)} items",
        ok,
        f"acknowledged adds present: {len(survivors & ids)}/{len(survivors)}, "
        f"removed present: {len(set(removed) & ids)}",
    )


def kill_during_adds(model: Path, idx: Path, params, good: list[bytes], work: Path) -> None:
    import httpx

    from siamax.index import Index
    from siamax.serve.gallery import item_id

    server = Server(model, "--index", idx, log=work / "kill.log")
    acked, stop, lock = [], threading.Event(), threading.Lock()

    def stream(t):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/index/items", files={"file": good[i % len(good)]}, data={"label": f"kill-{t}-{i}"})
                except httpx.HTTPError:
                    return  # the server died: this addition was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acked.append(r.json()["id"])
                i += 1

    threads = [threading.Thread(target=stream, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    server.stop()
    with lock:
        acknowledged = list(acked)
    try:
        disk = Index.load(idx, params)
        record(
            "kill -9 during 4 streams of adds: the index loads",
            "loads",
            f"{len(disk)} items",
            True,
            f"{len(acknowledged)} adds acknowledged before the kill",
        )
    except Exception as e:  # noqa: BLE001
        record("kill -9 during 4 streams of adds: the index loads", "loads", type(e).__name__, False, str(e)[:200])
        return
    ids = {item_id(p) for p in disk.paths}
    missing = [a for a in acknowledged if a not in ids]
    record(
        "kill -9: every acknowledged add is stored",
        "0 missing",
        f"{len(missing)} missing",
        not missing and acknowledged != [],
        f"{len(acknowledged)} acknowledged",
    )
    again = Server(model, "--index", idx, log=work / "restart.log")
    try:
        items = httpx.get(again.url + "/v1/model").json()["gallery"]["items"]
        record("restart after kill -9 serves the stored gallery", len(disk), items, items == len(disk))
        expect(
            "restart after kill -9: identify",
            200,
            lambda: httpx.post(again.url + "/v1/identify", files={"file": good[0]}, data={"k": "5"}),
        )
    finally:
        again.stop()


def full_disk(model: Path, idx: Path, params, good: bytes, work: Path) -> None:
    import httpx

    from siamax.index import Index

    mnt = work / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],  # noqa: S607
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    how = "tmpfs of 200 KiB (mount -t tmpfs -o size=200k)" if mounted.returncode == 0 else None
    folder = mnt / "idx"
    shutil.copytree(idx, folder)
    limit = None
    if how is None:
        limit = (folder / "index.npz").stat().st_size - 1
        how = f"mount refused ({mounted.stderr.strip()[:80]}); RLIMIT_FSIZE={limit} bytes on the server instead"
    print(f"full disk: {how}", flush=True)
    preexec = None if limit is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    server = Server(model, "--index", folder, log=work / "disk.log", preexec_fn=preexec)
    filler = mnt / "filler"
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        before_add = None
        if limit is None:
            r = c.post("/v1/index/items", files={"file": good}, data={"label": "before-full"})
            record("full disk: an add while there is room", 201, r.status_code, r.status_code == 201)
            before_add = r.json().get("id") if r.status_code == 201 else None
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the disk
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        stored = (folder / "index.npz").read_bytes()
        n = c.get("/v1/model").json()["gallery"]["items"]
        expect(
            "full disk: an add answers a 500 JSON",
            500,
            lambda: c.post("/v1/index/items", files={"file": good}, data={"label": "lost"}),
        )
        same = (folder / "index.npz").read_bytes() == stored
        try:
            loaded = len(Index.load(folder, params))
        except Exception as e:  # noqa: BLE001
            loaded = type(e).__name__
        record(
            "full disk: the old index.npz is intact and loads",
            f"{n} items",
            f"{loaded} items",
            same and loaded == n,
            "bytes unchanged" if same else "bytes CHANGED",
        )
        served = c.get("/v1/model").json()["gallery"]["items"]
        record("full disk: served gallery = stored gallery", n, served, served == n)
        if before_add is not None:
            r = c.delete(f"/v1/index/items/{before_add}")
            record(
                "full disk: a remove answers a 500 JSON", 500, r.status_code, r.status_code == 500 and is_json_error(r)
            )
            expect(
                "full disk: the item not removed is still served",
                200,
                lambda: c.post("/v1/identify", files={"file": good}, data={"k": "100"}),
            )
        expect(
            "full disk: the server still answers verify",
            200,
            lambda: c.post("/v1/verify", files={"a": good, "b": good}),
        )
        if limit is None:
            filler.unlink()
            expect(
                "disk freed again: an add succeeds",
                201,
                lambda: c.post("/v1/index/items", files={"file": good}, data={"label": "after-free"}),
            )
            loaded = len(Index.load(folder, params))
            record("disk freed again: the stored gallery has it", n + 1, loaded, loaded == n + 1)
        c.close()
    finally:
        server.stop()
        if mounted.returncode == 0:
            subprocess.run(["umount", str(mnt)], check=False, stdin=subprocess.DEVNULL)  # noqa: S607
    CASES.append({"name": "full disk: how it was simulated", "expected": "", "got": how, "ok": True, "detail": "info"})


def audio_cases(work: Path) -> None:
    import httpx
    import jax

    from siamax import api, checkpoint

    ma = checkpoint.export(api.init(jax.random.key(0), "tiny"), work / "audio", metadata={"modality": "audio"})
    server = Server(ma, "--max-seconds", "2", "--max-upload-mb", "8", log=work / "audio.log")
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        expect("audio: a 1 s WAV", 200, lambda: c.post("/v1/embed", files={"file": wav(1)}))
        expect("audio: a 3 s WAV > --max-seconds 2", 400, lambda: c.post("/v1/embed", files={"file": wav(3)}))
        hour = wav(3600, rate=1000, subtype="PCM_U8")  # 3.6 MB: under the upload limit
        t0 = time.perf_counter()
        expect(
            f"audio: a 1-hour WAV ({len(hour) / 1e6:.1f} MB)", 400, lambda: c.post("/v1/embed", files={"file": hour})
        )
        dt = time.perf_counter() - t0
        CASES[-1]["detail"] = f"answered in {dt:.2f} s; " + CASES[-1]["detail"]
        print(f"     ... the 1-hour WAV was answered in {dt:.2f} s", flush=True)
        expect(
            "audio: 1 s WAV whose header claims an hour (read: 1 s)",
            200,
            lambda: c.post("/v1/embed", files={"file": wav_lying(3600)}),
        )
        expect("audio: 9 channels", 400, lambda: c.post("/v1/embed", files={"file": wav(0.5, channels=9)}))
        expect("audio: a truncated WAV (30 bytes)", 415, lambda: c.post("/v1/embed", files={"file": wav(1)[:30]}))
        expect(
            "audio: a PNG sent as a clip",
            415,
            lambda: c.post("/v1/embed", files={"file": image_bytes((50, 50), "PNG")}),
        )
        expect("audio: text sent as a clip", 415, lambda: c.post("/v1/embed", files={"file": b"RIFF but not really"}))
        expect("audio: identify without a gallery", 404, lambda: c.post("/v1/identify", files={"file": wav(1)}))
        c.close()
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="serve_faults.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, metavar="PATH", help="write the cases as JSON to PATH")
    args = p.parse_args(argv)
    import httpx

    from siamax import checkpoint

    work = Path(tempfile.mkdtemp(prefix="siamax-serve-faults-"))
    t_start = time.perf_counter()
    try:
        model = make_model(work / "m", "tiny")
        params = checkpoint.load(model)
        for name in ("idx", "idx_kill", "idx_disk"):
            make_gallery(model, work / name, 40)
        other = make_model(work / "m2", "tiny", energy="cosine")
        make_gallery(other, work / "idx_other", 10)
        rng = np.random.default_rng(0)
        good = [drawing(rng) for _ in range(8)]
        token = secrets.token_urlsafe(32)
        (work / "token").write_text(token + "\n")
        (work / "short").write_text("abc\n")
        print("synthetic model (untrained tiny), galleries (random images) and uploads (random strokes)", flush=True)

        server = Server(
            model,
            "--index",
            work / "idx",
            "--token-file",
            work / "token",
            "--max-upload-mb",
            "1",
            "--max-pixels",
            "1000000",
            "--timeout",
            "3",
            log=work / "main.log",
        )
        try:
            phase("bad inputs", bad_inputs, server.url, token, good[0])
            port = server.url.rsplit(":", 1)[1]
            cli("cli: --host 0.0.0.0 without a token", ["serve", str(model), "--host", "0.0.0.0"], "--insecure")
            cli("cli: a token file of 3 characters", ["serve", str(model), "--token-file", str(work / "short")], "16")
            cli("cli: a token file that is not there", ["serve", str(model), "--token-file", str(work / "nope")])
            cli("cli: a port in use", ["serve", str(model), "--port", port], "cannot listen")
            cli(
                "cli: an index of another model",
                ["serve", str(model), "--index", str(work / "idx_other")],
                "fingerprint",
            )
            phase("concurrent changes", concurrent_changes, server.url, token, work / "idx", params, good)
            expect("main server: still healthy after all of it", 200, lambda: httpx.get(server.url + "/healthz"))
        finally:
            code = server.stop()
        log = server.text()
        record("main server: SIGTERM exits 0", 0, code, code == 0)
        record("main server: no traceback in its log", 0, log.count("Traceback"), "Traceback" not in log)
        phase("audio", audio_cases, work)
        phase("kill -9", kill_during_adds, model, work / "idx_kill", params, good, work)
        phase("full disk", full_disk, model, work / "idx_disk", params, good[0], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    real = [c for c in CASES if c["detail"] != "info"]
    failed = [c for c in real if not c["ok"]]
    print(
        f"\n{len(real) - len(failed)} of {len(real)} cases ok, {len(failed)} failed "
        f"({time.perf_counter() - t_start:.0f} s)"
    )
    for c in failed:
        print(f"  FAILED: {c['name']}: expected {c['expected']}, got {c['got']}: {c['detail'][:150]}")
    if args.json:
        out = {"meta": meta(args), "cases": CASES, "passed": len(real) - len(failed), "failed": len(failed)}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
