"""`siamax serve`: every endpoint, every refusal as JSON, the token, persistence, batching, a fuzz of uploads.

A tiny untrained model (its answers do not matter, only that they are the library's), a gallery built
by `siamax index build` from a tiny class folder (tests/test_cli.py's), Starlette's TestClient."""

import asyncio
import concurrent.futures
import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import httpx
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from siamax import api, checkpoint, cli, commands
from siamax.data import adapters
from siamax.errors import InputError
from siamax.index import Index
from siamax.serve import check_access, is_loopback, read_token
from siamax.serve.app import create_app
from siamax.serve.gallery import Gallery
from siamax.serve.uploads import Limits
from tests.test_cli import _tiny_folder

TOKEN = "t0ken-of-sixteen-chars"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def model_and_gallery(root):
    """A tiny untrained model in root/m, a class folder and its index root/idx: (model, folder)."""
    checkpoint.export(api.init(jax.random.key(0), "tiny"), root / "m", metadata={"ink": "dark", "threshold": 0.5})
    folder = _tiny_folder(root / "folder", classes=6, per_class=2)
    assert cli.main(["index", "build", str(root / "m"), str(folder), str(root / "idx")]) == 0
    return commands.load_model(root / "m"), folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return (*model_and_gallery(root), root)


@pytest.fixture
def served(setup, tmp_path):
    """A client of a server with a copy of the gallery (changes stay in this test) and a token."""
    model, folder, root = setup
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "index.npz").write_bytes((root / "idx" / "index.npz").read_bytes())
    app = create_app(model, Gallery(tmp_path / "idx", model.params), token=TOKEN,
                     limits=Limits(max_upload_bytes=200_000, max_pixels=100_000, max_seconds=5))  # fmt: skip
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:  # 500s as a client sees them
        yield client, app, tmp_path / "idx", folder


def _png(path) -> bytes:
    return path.read_bytes()


def _error(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}
    return r.json()["error"]


def test_healthz_model_openapi_and_page(served, setup):
    client, _, _, _ = served
    model = setup[0]
    healthz = client.get("/healthz", headers={"Authorization": ""})  # needs no token
    assert healthz.json() == {"status": "ok", "worker": os.getpid()}
    m = client.get("/v1/model").json()
    assert m["fingerprint"] == checkpoint.fingerprint(model.params) and m["input_size"] == 28
    assert m["modality"] == "ink" and m["threshold"] == 0.5 and m["gallery"] == {"items": 12, "classes": 6}
    assert "/v1/verify" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and "/v1/identify" in page.text
    assert "http" not in page.text.replace("http.", "")  # self-contained: no external resources


def test_verify_and_embed_equal_the_library(served, setup):
    client, _, _, folder = served
    model = setup[0]
    a, b = folder / "c0" / "0.png", folder / "c1" / "0.png"
    r = client.post("/v1/verify", files={"a": _png(a), "b": _png(b)})
    assert r.status_code == 200, r.text
    want = commands.verify(model, a, b)
    assert r.json()["probability"] == pytest.approx(want["probability"], abs=1e-6)
    assert r.json()["same"] == want["same"] and r.json()["threshold"] == 0.5
    e = client.post("/v1/embed", files={"file": _png(a)}).json()
    x = commands._read_files(model, [a])
    np.testing.assert_allclose(e["embedding"], np.asarray(api.embed(model.params, x))[0], atol=1e-5)


def test_identify_answers_what_index_search_answers(served, setup):
    client, _, idx, folder = served
    query = folder / "c3" / "1.png"
    r = client.post("/v1/identify", files={"file": _png(query)}, data={"k": "3"})
    assert r.status_code == 200, r.text
    matches = r.json()["matches"]
    want = commands.search_index(setup[2] / "idx", [query], k=3)[0]["matches"]
    assert [m["label"] for m in matches] == [m["label"] for m in want]
    assert [m["score"] for m in matches] == pytest.approx([m["score"] for m in want], abs=1e-6)
    thumb = client.get(matches[0]["thumbnail"])  # built from files: the index has their paths
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] <= 128


def test_add_and_remove_persist_and_survive_a_reopen(served, setup):
    client, _, idx, folder = served
    model = setup[0]
    r = client.post("/v1/index/items", files={"file": _png(folder / "c5" / "1.png")}, data={"label": "newcomer"})
    assert r.status_code == 201, r.text
    item = r.json()["id"]
    reopened = Index.load(idx, model.params)  # what a kill -9 right after the answer would leave
    assert len(reopened) == 13 and "newcomer" in reopened.labels
    matches = client.post("/v1/identify", files={"file": _png(folder / "c5" / "1.png")}, data={"k": "7"}).json()
    assert {"label": "newcomer", "id": item} in [{"label": m["label"], "id": m["id"]} for m in matches["matches"]]
    assert "thumbnail" not in [m for m in matches["matches"] if m["id"] == item][0]  # an upload names no file
    assert client.delete(f"/v1/index/items/{item}").json()["removed"] == item
    assert "newcomer" not in Index.load(idx, model.params).labels
    _error(client.delete(f"/v1/index/items/{item}"), 404)
    _error(client.delete("/v1/index/items/../../etc/passwd"), 404)


def test_a_crash_while_saving_leaves_the_old_index(served, setup, monkeypatch):
    client, _, idx, folder = served
    model = setup[0]
    before = (idx / "index.npz").read_bytes()

    def crash(*args, **kwargs):  # the process dies after half the new file was written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    r = client.post("/v1/index/items", files={"file": _png(folder / "c5" / "1.png")}, data={"label": "lost"})
    assert r.status_code == 500 and "internal error" in r.json()["error"]
    monkeypatch.undo()
    assert (idx / "index.npz").read_bytes() == before and len(Index.load(idx, model.params)) == 12
    assert client.get("/v1/model").json()["gallery"]["items"] == 12  # what is served is what is stored


def test_every_refusal_is_one_json_error(served, tmp_path):
    client, _, _, folder = served
    png = _png(folder / "c0" / "0.png")
    assert _error(client.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401)
    _error(client.get("/v1/model", headers={"Authorization": ""}), 401)
    _error(client.post("/v1/verify", files={"a": png}), 422)  # b missing
    _error(client.post("/v1/verify", content=b"not multipart"), 422)
    for k in ("0", "101", "two", "-1"):
        _error(client.post("/v1/identify", files={"file": png}, data={"k": k}), 422)
    _error(client.post("/v1/index/items", files={"file": png}), 422)  # no label
    _error(client.post("/v1/embed", files={"file": b"GIF89a not really"}), 415)
    _error(client.post("/v1/embed", files={"file": b"hello"}), 415)
    _error(client.post("/v1/embed", files={"file": png[: len(png) // 2]}), 415)  # truncated
    _error(client.post("/v1/embed", files={"file": b""}), 422)
    big = io.BytesIO()
    Image.new("L", (400, 400), 255).save(big, format="PNG")  # 160,000 pixels > 100,000, a small file
    assert "pixels" in _error(client.post("/v1/embed", files={"file": big.getvalue()}), 400)
    # A bomb: a PNG header claiming 100,000 x 100,000 pixels; PIL's own guard fires first, still a 400.
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = lambda body: struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(ihdr) + chunk(b"IDAT" + zlib.compress(b"\0" * 64)) + chunk(b"IEND")
    assert "pixels" in _error(client.post("/v1/embed", files={"file": bomb}), 400)
    _error(client.post("/v1/embed", files={"file": b"\0" * 300_000}), 413)
    _error(client.get("/nowhere"), 404)
    _error(client.get("/v1/verify"), 405)


def test_an_upload_larger_than_its_content_length_is_counted(served):
    client, _, _, _ = served

    def body():  # chunked: no Content-Length to check first; a well-formed start, so the parser reads on
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(30):
            yield b"x" * 10_000

    r = client.post("/v1/embed", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    _error(r, 413)


def test_an_error_after_the_answer_does_not_reach_the_server(setup, monkeypatch):
    # Starlette re-raises what its 500 handler answered; uvicorn then closes the keep-alive connection
    # under the client's next request. The guard keeps it: the transport below would raise it.
    model, folder, _ = setup
    app = create_app(model)
    monkeypatch.setattr(app.app.state.batcher, "submit", lambda *a, **k: 1 / 0)
    png = _png(folder / "c0" / "0.png")

    async def main():
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app)  # raise_app_exceptions: an exception that escapes fails here
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/v1/embed", files={"file": png}), await client.get("/healthz")

    failed, after = asyncio.run(main())
    assert "internal error" in _error(failed, 500) and after.status_code == 200


def test_concurrent_requests_share_one_device_call(setup):
    model, folder, _ = setup
    app = create_app(model, wait_s=0.2)
    png = _png(folder / "c0" / "0.png")

    async def main():
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                rs = await asyncio.gather(*[client.post("/v1/verify", files={"a": png, "b": png}) for _ in range(6)])
        return rs

    batcher = app.app.state.batcher
    rs = asyncio.run(main())
    assert all(r.status_code == 200 for r in rs) and len({r.json()["probability"] for r in rs}) == 1
    # 12 images, 6 pairs: one conversion to model format, one tower call, one head call
    assert batcher.calls["convert"] == 1 and batcher.calls["embed"] == 1 and batcher.calls["score"] == 1


def test_an_upload_that_fails_its_batch_fails_alone(setup, monkeypatch):
    model, folder, _ = setup
    app = create_app(model, wait_s=0.2)
    png = _png(folder / "c0" / "0.png")
    real = adapters.to_model_format

    def refusing_singles(batch, **kw):  # the one-image upload (embed) cannot be converted
        if any(len(d) == 1 for d in batch):
            raise InputError("this upload cannot be converted")
        return real(batch, **kw)

    monkeypatch.setattr(adapters, "to_model_format", refusing_singles)

    async def main():
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                verifies = [client.post("/v1/verify", files={"a": png, "b": png}) for _ in range(3)]
                return await asyncio.gather(client.post("/v1/embed", files={"file": png}), *verifies)

    embed, *verifies = asyncio.run(main())
    assert "cannot be converted" in _error(embed, 415)
    assert [r.status_code for r in verifies] == [200] * 3
    assert app.app.state.batcher.calls["embed"] == 1  # the others still shared one tower call


def test_access_rules(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_access("127.0.0.1", None, False)
    check_access("0.0.0.0", TOKEN, False)
    check_access("0.0.0.0", None, True)
    with pytest.raises(Exception, match="--insecure"):
        check_access("0.0.0.0", None, False)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(Exception, match="16 or more"):
        read_token(tmp_path / "short")
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "t") == TOKEN


def test_the_command_refuses_a_public_host_without_a_token(setup, capsys):
    root = setup[2]
    assert cli.main(["serve", str(root / "m"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--insecure" in err and "Traceback" not in err
    assert cli.main(["serve", str(root / "m"), "--token-file", str(root / "missing")]) == 2
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # PIL on fuzzed TIFF headers: expected
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=3000), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\0"])
                      .flatmap(lambda head: st.binary(max_size=2000).map(lambda tail: head + tail))))  # fmt: skip
def test_fuzzed_uploads_get_a_4xx_json_never_a_crash(served, blob):
    client = served[0]
    r = client.post("/v1/embed", files={"file": blob})
    assert r.status_code in (200, 400, 413, 415, 422), r.text
    assert r.status_code == 200 or set(r.json()) == {"error"}


def test_an_audio_model_takes_clips_within_the_length_limit(setup, tmp_path):
    import soundfile

    checkpoint.export(api.init(jax.random.key(0), "tiny"), tmp_path / "a", metadata={"modality": "audio"})
    model = commands.load_model(tmp_path / "a")
    app = create_app(model, limits=Limits(max_seconds=2))

    def wav(seconds):
        out = io.BytesIO()
        soundfile.write(out, np.sin(np.arange(int(8000 * seconds)) / 5).astype(np.float32), 8000, format="WAV")
        return out.getvalue()

    with TestClient(app) as client:
        r = client.post("/v1/embed", files={"file": wav(1)})
        assert r.status_code == 200 and r.json()["dim"] == model.params.spec.embedding_dim
        assert "lasts 3.0 s" in _error(client.post("/v1/embed", files={"file": wav(3)}), 400)
        _error(client.post("/v1/embed", files={"file": _png(setup[1] / "c0" / "0.png")}), 415)  # an image
        _error(client.post("/v1/identify", files={"file": wav(1)}), 404)  # no gallery


@pytest.mark.slow  # a server process of its own (~10 s)
def test_sigterm_finishes_the_request_in_flight_and_exits_0(setup):
    _, folder, root = setup
    code = "import sys; from siamax.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(root / "m"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stdout.read()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        for _ in range(240):  # listening once the warm-up compilation is done
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            time.sleep(0.25)
        png = _png(folder / "c0" / "0.png")
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        body = head + png + b"\r\n--b--\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /v1/embed HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:100]
            )
            time.sleep(0.5)  # the request is in flight: headers read, its body not yet
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            s.sendall(body[100:])
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"embedding"' in answer
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "stopped by SIGTERM" in out and "Traceback" not in out
    finally:
        proc.kill()


@pytest.mark.slow  # two server processes of their own (~15 s)
def test_workers_share_one_gallery_and_stop_together(setup, tmp_path):
    """--workers 2: two processes answer on one port; a change acknowledged by either is what the next
    request to either sees, concurrent additions through both are all kept, and SIGTERM stops both."""
    _, folder, root = setup
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "index.npz").write_bytes((root / "idx" / "index.npz").read_bytes())
    code = "import sys; from siamax.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(root / "m"), "--index", str(tmp_path / "idx"), "--port", "0",
         "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        while not (lines and "serving" in lines[-1]):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)
        assert "with 2 server processes" in lines[-1], lines[-1]
        url = "http://127.0.0.1:" + lines[-1].split("http://127.0.0.1:")[1].split()[0]
        workers = set()
        for _ in range(100):  # a new connection each time: the kernel hands them to either process
            workers.add(httpx.get(url + "/healthz").json()["worker"])
            if len(workers) == 2:
                break
        assert len(workers) == 2, workers
        n = httpx.get(url + "/v1/model").json()["gallery"]["items"]
        png = _png(folder / "c1" / "0.png")
        item = httpx.post(url + "/v1/index/items", files={"file": png}, data={"label": "new"}).json()["id"]
        assert {httpx.get(url + "/v1/model").json()["gallery"]["items"] for _ in range(10)} == {n + 1}
        assert {httpx.get(f"{url}/v1/index/items/{item}/thumbnail").status_code for _ in range(6)} == {404}  # upload
        assert httpx.delete(f"{url}/v1/index/items/{item}").status_code == 200
        assert {httpx.delete(f"{url}/v1/index/items/{item}").status_code for _ in range(6)} == {404}

        def add(i):
            return httpx.post(url + "/v1/index/items", files={"file": png}, data={"label": f"c{i}"}).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(add, range(24))) == {201}
        assert {httpx.get(url + "/v1/model").json()["gallery"]["items"] for _ in range(10)} == {n + 24}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped by SIGTERM" in out and "Traceback" not in out, out
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        model = commands.load_model(root / "m")
        assert len(Index.load(tmp_path / "idx" / "index.npz", model.params)) == n + 24
    finally:
        proc.kill()
