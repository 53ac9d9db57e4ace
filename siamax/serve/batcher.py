"""Requests that arrive together share one device call: the micro-batcher of ``siamax serve``.

Each request puts a job (its uploads, decoded on the host, and what to do with their embeddings) on
an asyncio queue. The batcher takes the first job, then whatever else arrives within ``wait_s`` (or
until ``max_batch`` images), and runs the batch in its one device thread:

0. one conversion brings every upload of the batch to model format (``adapters.to_model_format``:
   one call per distinct size of upload; a batch that fails here is converted job by job, so that a
   bad upload fails its own request only);
1. one tower call embeds every image of the batch (``siamax.embed``);
2. one head call scores every verification pair of the batch (``siamax.score_embeddings``);
3. one gallery search answers every identification of the batch (``Index.search``);
4. additions and removals are applied in their order of arrival, then the gallery is saved once
   (a group commit), and only then are they acknowledged.

A batch that reads the gallery first reloads it if another server process has changed it
(``Gallery.sync``); its changes are made under the gallery's lock (``Gallery.locked``). A "sync" job
does only that: the routes that read the gallery's size or items send one first.

While the device works on one batch the next one gathers, so batches grow with the load. Each call
runs at a batch size padded to a power of two (the padding rows repeat the first), so the jitted
functions compile once per size (1, 2, 4, ... up to ``max_batch``), not once per request count.

The device thread is the only one that touches the model and the gallery: searches and changes never
interleave. ``calls`` counts the device calls of each kind (the tests read it).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging

import numpy as np

from siamax import api
from siamax.data import adapters
from siamax.errors import UserError, one_line
from siamax.serve.uploads import RequestError

log = logging.getLogger("siamax.serve")
GALLERY_JOBS = ("identify", "add", "remove", "sync")


def _count(job) -> int:
    return 0 if job.images is None else len(job.images)


def _padded(x: np.ndarray) -> np.ndarray:
    """``x`` with rows appended (copies of its first) up to the next power of two."""
    n = len(x)
    size = 1 << max(0, n - 1).bit_length()
    return x if size == n else np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])


@dataclasses.dataclass
class Job:
    kind: str  # "embed", "verify", "identify", "add", "remove", "sync"
    images: object  # the uploads decoded (adapters.decode_bytes: a sized batch), or None ("remove", "sync")
    arg: object = None  # identify: k; add: the label; remove: the item id
    future: asyncio.Future | None = None


class Batcher:
    """See the module docstring. ``model``: a ``siamax.commands.Model``; ``gallery``: a
    ``siamax.serve.gallery.Gallery`` or None (no gallery: identify and changes are refused upstream)."""

    def __init__(self, model, gallery=None, *, max_batch: int = 32, wait_s: float = 0.002):
        self.model, self.gallery = model, gallery
        self.max_batch, self.wait_s = max_batch, wait_s
        self.calls = collections.Counter()
        self._queue: asyncio.Queue[Job] | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._device = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="siamax-device")

    def _shape(self) -> tuple[int, ...]:
        """One model-format image's shape, as the decoders give it: (S, S) gray, (S, S, 3) RGB."""
        s = self.model.spec
        return (s.input_size, s.input_size) + ((3,) if s.channels == 3 else ())

    # -- the event loop's side -------------------------------------------------------------

    async def start(self) -> None:
        self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="siamax-batcher")

    async def stop(self) -> None:
        """Finish the jobs already queued, then stop (uvicorn has drained the requests by now)."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 60)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def submit(self, kind: str, images=None, arg=None):
        """Queue a job and wait for its result (an exception of the job is raised here)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        job = Job(kind, images, arg, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        self._arrived.set()
        return await job.future

    async def _take(self) -> list[Job]:
        """The next batch: the first job, then what arrives within ``wait_s``, up to ``max_batch`` images."""
        loop = asyncio.get_running_loop()
        while self._queue.empty():
            self._arrived.clear()
            await self._arrived.wait()
        jobs = [self._queue.get_nowait()]
        n, deadline = _count(jobs[0]), loop.time() + self.wait_s
        while n < self.max_batch:
            while not self._queue.empty() and n < self.max_batch:
                jobs.append(self._queue.get_nowait())
                n += _count(jobs[-1])
            left = deadline - loop.time()
            if n >= self.max_batch or left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._take()
            try:
                results = await loop.run_in_executor(self._device, self._process, jobs)
            except Exception as e:  # noqa: BLE001  a failed batch fails its jobs, not the server
                log.exception("a batch of %d job(s) failed", len(jobs))
                results = [e] * len(jobs)
            for job, result in zip(jobs, results):
                if not job.future.done():  # a request that timed out has stopped waiting
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
                self._queue.task_done()

    # -- the device thread's side ----------------------------------------------------------

    def warm(self) -> None:
        """Compile the tower and the head at every padded batch size up front (first requests stay fast)."""
        shape = self._shape()
        size = 1
        while size <= 2 * self.max_batch:
            e = self._embed(np.zeros((size, *shape), np.uint8))
            self._score(e, e)
            size *= 2
        self.calls.clear()

    def _embed(self, images: np.ndarray) -> np.ndarray:
        self.calls["embed"] += 1
        return np.asarray(api.embed(self.model.params, _padded(images)))[: len(images)]

    def _score(self, ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
        self.calls["score"] += 1
        return np.asarray(api.score_embeddings(self.model.params, _padded(ea), _padded(eb)))[: len(ea)]

    def _search(self, queries: np.ndarray, k: int):
        self.calls["search"] += 1
        scores, ids = self.gallery.index.search(_padded(queries), k)
        return np.asarray(scores)[: len(queries)], np.asarray(ids)[: len(queries)]

    def _convert(self, jobs: list[Job], results: list) -> None:
        """Model format of every job's uploads (``Job.images`` replaced), in one conversion; if that
        fails, job by job: a job whose uploads fail gets its error in ``results``."""
        uploads = [j.images for j in jobs if _count(j)]
        if not uploads:
            return
        self.calls["convert"] += 1
        try:
            x = adapters.to_model_format(uploads, pad=True)
        except Exception:  # noqa: BLE001  find the job it was: each alone
            log.warning("converting a batch of uploads failed; converting them one request at a time")
            for i, j in enumerate(jobs):
                if _count(j):
                    try:
                        j.images = adapters.to_model_format([j.images], pad=True)
                    except UserError as e:
                        results[i] = RequestError(415, one_line(e))
                    except Exception as e:  # noqa: BLE001  a bug: a 500 for this request only
                        log.exception("converting an upload failed")
                        results[i] = e
            return
        at = 0
        for j in jobs:
            if _count(j):
                n = len(j.images)
                j.images, at = x[at : at + n], at + n

    def _process(self, jobs: list[Job]) -> list:
        """Every job's result (or exception), in order; see the module docstring."""
        results: list = [None] * len(jobs)
        self._convert(jobs, results)
        alive = [i for i in range(len(jobs)) if results[i] is None]
        for i, r in zip(alive, self._work([jobs[i] for i in alive])):
            results[i] = r
        return results

    def _work(self, jobs: list[Job]) -> list:
        """The results of jobs whose images are in model format: tower, head, search, changes."""
        results: list = [None] * len(jobs)
        if self.gallery is not None and any(j.kind in GALLERY_JOBS for j in jobs):
            self.gallery.sync()
        images = [j.images for j in jobs if _count(j)]
        e = self._embed(np.concatenate(images)) if images else np.zeros((0, 0), np.float32)
        rows, at = [], 0
        for j in jobs:
            rows.append(e[at : at + _count(j)])
            at += _count(j)
        verify = [i for i, j in enumerate(jobs) if j.kind == "verify"]
        if verify:
            p = self._score(np.stack([rows[i][0] for i in verify]), np.stack([rows[i][1] for i in verify]))
            for i, pi in zip(verify, p):
                results[i] = float(pi)
        for i, j in enumerate(jobs):
            if j.kind == "embed":
                results[i] = rows[i]
        identify = [i for i, j in enumerate(jobs) if j.kind == "identify"]
        if identify:
            for i, matches in zip(
                identify, self._identify([rows[i][0] for i in identify], [jobs[i].arg for i in identify])
            ):
                results[i] = matches
        changes = [i for i, j in enumerate(jobs) if j.kind in ("add", "remove")]
        if changes:
            self._change(jobs, rows, changes, results)
        return results

    def _identify(self, queries: list[np.ndarray], ks: list[int]) -> list[list[dict]]:
        """Per query, its best ``k`` classes (each by its best item; at most the gallery's classes): the
        rule of ``siamax identify`` (``commands._top_classes``), with one search for all the queries.
        None for each query if the gallery is empty."""
        g = self.gallery
        if len(g) == 0:
            return [None for _ in queries]
        # The k best classes lie among the k * (most items of one class) best items, whatever the ranking;
        # searched at a power of two (capped at the gallery) so that k does not recompile the search.
        need = min(len(g), max(ks) * g.most)
        scores, ids = self._search(np.stack(queries), min(len(g), 1 << (need - 1).bit_length()))
        labels, out = g.index.labels, []
        for k, s_row, i_row in zip(ks, scores, ids):
            matches, seen = [], set()
            for s, i in zip(s_row, i_row):
                if labels[i] not in seen:
                    seen.add(labels[i])
                    matches.append({"label": labels[i], "score": float(s), "id": g.id_of_row(int(i))})
                if len(matches) == k:
                    break
            out.append(matches)
        return out

    def _change(self, jobs: list[Job], rows: list[np.ndarray], changes: list[int], results: list) -> None:
        """Apply the additions and removals in order, save once, and only then acknowledge them."""
        g = self.gallery
        with g.locked():  # on the latest saved index; no other process changes it meanwhile
            for i in changes:
                j = jobs[i]
                if j.kind == "add":
                    results[i] = g.add(rows[i][0], j.arg)
                else:
                    results[i] = g.remove(j.arg)
            if any(results[i] is not False for i in changes):  # something changed: persist it
                self.calls["save"] += 1
                try:
                    g.save()
                except Exception as e:  # noqa: BLE001  none of this batch's changes is kept (save reloaded the disk's)
                    log.exception("saving the gallery failed")
                    for i in changes:
                        results[i] = e
