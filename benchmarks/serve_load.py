#!/usr/bin/env python
"""Requests per second and latency of ``siamax serve`` under closed-loop load, against in-process calls.

Starts ``siamax serve`` as a subprocess on 127.0.0.1 (a free port) with an untrained model made for
the purpose (``siamax.init`` of the quick preset's network, ``small`` with the cosine energy, written
by ``siamax.checkpoint.export``) and a gallery of ``--gallery`` items (``Index.build`` of the
embeddings of random images, 10 items per class, saved with ``Index.save``). The gallery and the
query images are synthetic (random pixels, random strokes): only speed is measured, not accuracy.

Then, for ``POST /v1/verify`` (two 105 x 105 PNG drawings) and ``POST /v1/identify`` (one, k=5), at
each of ``--connections`` (default 1, 8, 32) closed-loop clients (plain asyncio streams, one keep-alive
connection each, the next request sent as soon as the answer arrives) for ``--seconds`` (after a
short untimed warm-up): requests/s, p50 and p99 latency, and the count of answers that were not 200
(must be 0). The clients run on the same machine as the server and take part of its CPU.

Reference (in this process, once before the server starts and once after it has stopped; their mean,
as the machine drifts): the server's own batched work, called directly: ``siamax.serve.uploads.decode``
of each request's upload (the same host decoding), then ``Batcher._process`` on a full batch
(``--max-batch`` images: 16 verify pairs, 32 identify queries, the most the server's batcher puts in
one device call), i.e. the conversion to model format, ``siamax.embed``, ``score_embeddings`` and
``Index.search``. Reported with the host decoding ("in-process") and without ("device only"); the
ratio served / in-process at the highest connection count is the issue's target (>= 0.5).

JSON (``--json PATH``): {"meta": {hardware, versions, git commit, date, settings}, "load": [{endpoint,
connections, seconds, requests, requests_per_s, p50_ms, p99_ms, errors (any answer but 200, or
no answer, warm-up included), error_samples, client_cpu_cores (CPU seconds of the clients' process per
second, warm-up included)}],
"reference": {endpoint: {...}} (the mean of "reference_before" and "reference_after"), "ratios": {endpoint: {...}}}.

Example::

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ENDPOINTS = ("verify", "identify")
PER_CLASS = 10  # gallery items per class
QUERY_SIZE = 105  # pixels of the uploaded drawings (Omniglot's), resized by the server's decode path
K = 5


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="serve_load.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gallery", type=int, default=10_000, help="gallery items (default: 10000)")
    p.add_argument(
        "--seconds", type=float, default=60.0, help="timed seconds per endpoint and concurrency (default 60)"
    )
    p.add_argument("--warmup", type=float, default=3.0, help="untimed seconds before each measurement (default 3)")
    p.add_argument("--connections", default="1,8,32", help="concurrent connections, comma-separated (default 1,8,32)")
    p.add_argument("--ref-seconds", type=float, default=20.0, help="seconds of each in-process reference (default 20)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default 32, its default)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="the server's --batch-wait-ms (default 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="the server's --workers (default: this machine's cores, one server process per core)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    return p.parse_args(argv)


# -- a server in a subprocess (serve_faults.py uses these too) ---------------------------------


def siamax_command() -> list[str]:
    exe = Path(sys.executable).with_name("siamax")
    return [str(exe)] if exe.exists() else [shutil.which("siamax") or "siamax"]


class Server:
    """``siamax serve MODEL ARGS`` on 127.0.0.1, a free port (``--port 0``), its output in ``log``."""

    def __init__(self, model, *args, log: Path, env=None, preexec_fn=None, ready_s: float = 600):
        self.log = Path(log)
        self._out = open(self.log, "wb")  # noqa: SIM115  closed in stop()
        cmd = [*siamax_command(), "serve", str(model), "--host", "127.0.0.1", "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(  # noqa: S603
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
        self.url = self._wait(ready_s)

    def _wait(self, ready_s: float) -> str:
        import httpx

        deadline, url = time.monotonic() + ready_s, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"siamax serve exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if url is None:
                m = re.search(r"on (http://127\.0\.0\.1:\d+)", self.text())
                url = m.group(1) if m else None
            if url is not None:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.25)
        self.proc.kill()
        raise RuntimeError(f"siamax serve was not ready within {ready_s:g} s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, wait_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def multipart(files: dict[str, bytes], fields: dict[str, str] | None = None, boundary: str = "siamaxbench"):
    """(body, content-type) of a multipart/form-data request, built once so clients spend no CPU on it."""
    out = io.BytesIO()
    for name, blob in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'.encode())
        out.write(b"Content-Type: image/png\r\n\r\n" + blob + b"\r\n")
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def drawing(rng: np.random.Generator, size: int = QUERY_SIZE) -> bytes:
    """A PNG of a few random black strokes on white: a synthetic 'handwritten character'."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 5))):
        pts = [tuple(int(v) for v in rng.integers(10, size - 10, 2)) for _ in range(int(rng.integers(2, 5)))]
        d.line(pts, fill=0, width=int(rng.integers(2, 5)))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def make_model(folder: Path, spec_name: str = "small", **spec_changes) -> Path:
    """An untrained model written as ``siamax export`` writes it (only speed matters here)."""
    import jax

    import siamax
    from siamax import checkpoint
    from siamax.model import MODELS

    spec = MODELS[spec_name].replace(**spec_changes) if spec_changes else spec_name
    params = siamax.init(jax.random.key(0), spec)
    return checkpoint.export(params, folder, metadata={"ink": "dark", "threshold": 0.5})


def make_gallery(model_path: Path, folder: Path, n: int, seed: int = 0) -> Path:
    """An index of ``n`` embeddings of random images (``n // PER_CLASS`` classes), saved with Index.save.
    Item paths are ``upload:synthetic-<i>`` (the server's name for an item that names no file)."""
    import siamax
    from siamax import checkpoint
    from siamax.index import Index

    params = checkpoint.load(model_path)
    s = params.spec
    shape = (s.input_size, s.input_size) + ((3,) if s.channels == 3 else ())
    rng = np.random.default_rng(seed)
    rows = []
    for lo in range(0, n, 500):
        x = rng.integers(0, 256, (min(500, n - lo), *shape), dtype=np.uint8)
        rows.append(np.asarray(siamax.embed(params, x)))
    e = np.concatenate(rows) if rows else np.zeros((0, s.embedding_dim), np.float32)
    labels = [f"class-{i // PER_CLASS:05d}" for i in range(n)]
    paths = [f"upload:synthetic-{i:06d}" for i in range(n)]
    index = Index.build(params, e, labels, paths)
    index.save(folder)
    return folder


# -- load ---------------------------------------------------------------------------------------


async def _post(reader, writer, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: (status, body). Plain asyncio streams, not an HTTP client
    library: the clients share the server's CPU, and what they spend is taken from the figures."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    if length is None:
        raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
    return status, await reader.readexactly(int(length.group(1)))


async def closed_loop(url: str, body: bytes, ctype: str, connections: int, seconds: float, warmup: float) -> dict:
    host, port, path = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url).groups()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    t_measure, t_end = start + warmup, start + warmup + seconds

    async def worker():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    status, answer = await asyncio.wait_for(_post(reader, writer, request), 120)
                    ok, what = status == 200, f"{status} {answer[:200]!r}"
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                    ok, what = False, f"{type(e).__name__}: {e}"
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                t1 = time.perf_counter()
                if t0 >= t_measure and t1 <= t_end:  # timed: only requests wholly inside the window
                    latencies.append(t1 - t0)
                if not ok:  # counted at any time, warm-up included
                    errors.append(what)
        finally:
            writer.close()

    await asyncio.gather(*[worker() for _ in range(connections)])
    client_cores = (time.process_time() - cpu0) / (time.perf_counter() - start)  # the clients' share of the CPU
    lat = np.asarray(latencies) * 1000
    return {
        "connections": connections,
        "seconds": seconds,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "errors": len(errors),
        "error_samples": errors[:5],
        "client_cpu_cores": round(client_cores, 2),
    }


# -- the in-process reference -------------------------------------------------------------------


def _mean_reference(before: dict, after: dict) -> dict:
    """Per endpoint and kind, requests/s and ms/batch as the mean of two references."""
    out = {}
    for endpoint, kinds in before.items():
        out[endpoint] = {}
        for label, f in kinds.items():
            g = after[endpoint][label]
            out[endpoint][label] = {
                **f,
                "requests_per_s": round((f["requests_per_s"] + g["requests_per_s"]) / 2, 1),
                "ms_per_batch": round((f["ms_per_batch"] + g["ms_per_batch"]) / 2, 2),
            }
    return out


def reference(model_path: Path, index_folder: Path, bodies: dict, args) -> dict:
    """The server's batched work called directly (module docstring), requests/s with and without decode."""
    from siamax import commands
    from siamax.serve.batcher import Batcher, Job
    from siamax.serve.gallery import Gallery
    from siamax.serve.uploads import Limits, decode

    model = commands.load_model(model_path)
    gallery = Gallery(index_folder, model.params)
    batcher = Batcher(model, gallery, max_batch=args.max_batch)
    batcher.warm()
    limits = Limits()
    out = {}
    for endpoint in ENDPOINTS:
        names = ["a", "b"] if endpoint == "verify" else ["file"]
        blobs = bodies[endpoint]["blobs"]
        per_batch = max(1, args.max_batch // len(names))  # requests in one full batch of the server

        def decoded(names=names, blobs=blobs, per_batch=per_batch):
            return [decode(model, [blobs[i % len(blobs)][n] for n in names], names, limits) for i in range(per_batch)]

        def jobs(xs, endpoint=endpoint):
            return [Job(endpoint, x, K if endpoint == "identify" else None) for x in xs]

        xs = decoded()
        results = batcher._process(jobs(xs))  # once untimed: compiles the search at its k
        assert all(not isinstance(r, BaseException) for r in results), results
        figures = {}
        for label, step in (
            ("with_decode", lambda: batcher._process(jobs(decoded()))),
            ("device_only", lambda xs=xs: batcher._process(jobs(xs))),
        ):
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.ref_seconds / 2:
                step()
                calls += 1
            dt = time.perf_counter() - t0
            figures[label] = {
                "batches": calls,
                "requests_per_batch": per_batch,
                "seconds": round(dt, 2),
                "requests_per_s": round(calls * per_batch / dt, 2),
                "ms_per_batch": round(dt / calls * 1000, 2),
            }
        out[endpoint] = figures
    return out


# -- provenance ----------------------------------------------------------------------------------


def meta(args, extra: dict | None = None) -> dict:
    import importlib.metadata

    from siamax import provenance

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = provenance.environment()
    env["versions"].update({n: version(n) for n in ("starlette", "uvicorn", "httpx", "python-multipart", "pillow")})
    return {
        **provenance.git_state(),
        "date": time.strftime("%Y-%m-%d"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": env["processor"],
        "cores": os.cpu_count(),
        **env,
        "load_average": list(os.getloadavg()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **(extra or {}),
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'endpoint':9s} {'conns':>5s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
    head += f" {'client CPU':>10s}"  # cores the clients themselves used (the rest: the server's)
    print(head)
    print("-" * len(head))
    for r in rows:
        _print_row(r)


def main(argv=None) -> dict:
    args = parse_args(argv)
    conns = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="siamax-serve-load-"))
    try:
        t = time.perf_counter()
        model_path = make_model(work / "model", "small", energy="cosine")
        make_gallery(model_path, work / "idx", args.gallery)
        print(
            f"model (untrained 'small', cosine: the quick preset's network) and a gallery of {args.gallery:,} "
            f"synthetic items (random images, {PER_CLASS} per class) made in {time.perf_counter() - t:.1f} s; "
            "synthetic uploads: only speed is measured",
            flush=True,
        )
        rng = np.random.default_rng(1)
        pngs = [drawing(rng) for _ in range(16)]
        blobs = {
            "verify": [{"a": pngs[i], "b": pngs[(i + 1) % 16]} for i in range(16)],
            "identify": [{"file": pngs[i]} for i in range(16)],
        }
        bodies = {"verify": {"blobs": blobs["verify"]}, "identify": {"blobs": blobs["identify"]}}
        bodies["verify"]["body"] = multipart(blobs["verify"][0])
        bodies["identify"]["body"] = multipart(blobs["identify"][0], {"k": str(K)})
        print("in-process reference, before the server starts ...", flush=True)
        ref_before = reference(model_path, work / "idx", bodies, args)
        t = time.perf_counter()
        server = Server(
            model_path,
            "--index",
            work / "idx",
            "--max-batch",
            args.max_batch,
            "--batch-wait-ms",
            args.batch_wait_ms,
            "--workers",
            args.workers,
            log=work / "server.log",
        )
        print(f"siamax serve ready at {server.url} in {time.perf_counter() - t:.1f} s", flush=True)
        rows = []
        try:
            for endpoint in ENDPOINTS:
                body, ctype = bodies[endpoint]["body"]
                for c in conns:
                    r = asyncio.run(
                        closed_loop(f"{server.url}/v1/{endpoint}", body, ctype, c, args.seconds, args.warmup)
                    )
                    rows.append({"endpoint": endpoint, **r})
                    if len(rows) == 1:
                        print_table(rows)
                    else:
                        _print_row(rows[-1])
        finally:
            code = server.stop()
        log_text = server.text()
        tracebacks = log_text.count("Traceback")
        print(f"server stopped (exit {code}); tracebacks in its log: {tracebacks}", flush=True)
        print("in-process reference, after the server has stopped ...", flush=True)
        ref_after = reference(model_path, work / "idx", bodies, args)
        ref = _mean_reference(ref_before, ref_after)  # the machine drifts: the mean of one before and one after
        top = max(conns)
        ratios = {}
        for endpoint in ENDPOINTS:
            served = next(r for r in rows if r["endpoint"] == endpoint and r["connections"] == top)["requests_per_s"]
            ratios[endpoint] = {
                "connections": top,
                "served_per_s": served,
                "in_process_per_s": ref[endpoint]["with_decode"]["requests_per_s"],
                "device_only_per_s": ref[endpoint]["device_only"]["requests_per_s"],
                "served_over_in_process": round(served / ref[endpoint]["with_decode"]["requests_per_s"], 3),
                "served_over_device_only": round(served / ref[endpoint]["device_only"]["requests_per_s"], 3),
            }
        errors = sum(r["errors"] for r in rows)
        met = errors == 0 and all(v["served_over_in_process"] >= 0.5 for v in ratios.values())
        print()
        print_table(rows)
        print()
        head = f"{'endpoint':9s} {'reference':12s} {'req/batch':>9s} {'ms/batch':>9s} {'req/s':>8s}"
        print(head)
        print("-" * len(head))
        for endpoint in ENDPOINTS:
            for label in ("with_decode", "device_only"):
                f = ref[endpoint][label]
                name = "in-process" if label == "with_decode" else "device only"
                b, a = ref_before[endpoint][label]["requests_per_s"], ref_after[endpoint][label]["requests_per_s"]
                print(
                    f"{endpoint:9s} {name:12s} {f['requests_per_batch']:9d} {f['ms_per_batch']:9.1f} "
                    f"{f['requests_per_s']:8.1f}  (before {b:.1f}, after {a:.1f})"
                )
        print()
        for endpoint, v in ratios.items():
            print(
                f"{endpoint}: served at {top} connections / in-process = {v['served_per_s']:.1f} / "
                f"{v['in_process_per_s']:.1f} = {v['served_over_in_process']:.2f} (target >= 0.5); "
                f"/ device only {v['device_only_per_s']:.1f} = {v['served_over_device_only']:.2f}"
            )
        print(f"errors: {errors}; target {'met' if met else 'NOT met'}")
        out = {
            "meta": meta(
                args,
                {
                    "gallery": args.gallery,
                    "gallery_content": "synthetic: embeddings of random images",
                    "uploads": f"synthetic {QUERY_SIZE}x{QUERY_SIZE} PNG drawings (random strokes)",
                    "model": "untrained small, cosine energy (the quick preset's network)",
                    "k": K,
                    "seconds": args.seconds,
                    "warmup_s": args.warmup,
                    "max_batch": args.max_batch,
                    "batch_wait_ms": args.batch_wait_ms,
                    "server_workers": args.workers,
                    "client": "asyncio streams, prebuilt requests, a keep-alive connection each, same machine",
                    "server_tracebacks": tracebacks,
                },
            ),
            "load": rows,
            "reference": ref,
            "reference_before": ref_before,
            "reference_after": ref_after,
            "ratios": ratios,
            "errors": errors,
            "target_met": met,
        }
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {args.json}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _print_row(r: dict) -> None:
    print(
        f"{r['endpoint']:9s} {r['connections']:5d} {r['requests']:8d} {r['requests_per_s']:8.1f} "
        f"{r['p50_ms'] or float('nan'):8.1f} {r['p99_ms'] or float('nan'):8.1f} {r['errors']:6d} "
        f"{r['client_cpu_cores']:10.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
