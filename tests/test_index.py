"""siamax.Index: exact top-k equal to a brute-force score_embeddings ranking for every energy (over
several chunks, a last chunk that does not divide the gallery, query blocks), add / remove, save /
load, refusal of another model's index and of files that are not indexes, the argument checks, no
recompilation on repeated searches, the faiss backend equal to the exact one, and the approximate
(HNSW) backend: its answers rescored exactly, its graph saved, its recall measured."""

import sys

import jax
import numpy as np
import pytest

import siamax
from siamax import checkpoint, energies, neighbours
from siamax import index as index_module
from siamax.errors import ConfigError, DataError, InputError, InputTypeError, ModelError, UserError
from siamax.index import Index, Match
from siamax.model import ModelSpec

SPEC = ModelSpec(
    input_size=16, filters=(4,), kernels=(3,), pools=(True,), padding="SAME", fc_units=24, init="lecun", conv_impl="xla"
)
D = SPEC.embedding_dim
G = 1000  # a capacity of 1024 rows: the last 24 are padding


@pytest.fixture(scope="module", params=energies.ENERGIES)
def energy(request):
    return request.param


def _params(energy, seed=0):
    p = siamax.init(jax.random.key(seed), SPEC.replace(energy=energy))
    if energy != "weighted_l1":  # a head that is not the initial one, slope softplus(-0.4)
        p = p.replace(weights={**p.weights, "head": {"scale": np.float32(-0.4), "bias": np.float32(0.7)}})
    return p


def _data(n=G, q=5, seed=0):
    rng = np.random.default_rng(seed)
    # ReLU-like (non-negative) features, as the towers give
    gallery = np.maximum(rng.normal(size=(n, D)), 0).astype(np.float32)
    queries = np.maximum(rng.normal(size=(q, D)), 0).astype(np.float32)
    labels = [f"class{i % 37}" for i in range(n)]
    return gallery, queries, labels


def _brute_force(params, gallery, queries):
    """(Q, G) probabilities from siamax.score_embeddings, pair by pair."""
    nq, n = len(queries), len(gallery)
    e1 = np.repeat(queries, n, axis=0)
    e2 = np.tile(gallery, (nq, 1))
    return np.asarray(siamax.score_embeddings(params, e1, e2)).reshape(nq, n)


def _assert_ranking(scores, ids, reference, atol=1e-6):
    """``ids`` are a best-first top-k of ``reference`` (Q, G) up to float ties, and ``scores`` are its values."""
    k = ids.shape[1]
    expected = -np.sort(-reference, axis=1)[:, :k]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(np.take_along_axis(reference, ids, 1), scores, rtol=0, atol=atol)
    assert all(len(set(row)) == k for row in ids.tolist()), "an item was returned twice"


# The unit suite: the layout with every boundary (chunks, query blocks, top-k blocks); the full suite all three.
@pytest.mark.parametrize(
    "layout",
    [pytest.param("one_chunk", marks=pytest.mark.slow), "chunks_query_blocks_top_k_blocks"]
    + [pytest.param("wide", marks=pytest.mark.slow)],
)
def test_search_equals_brute_force(energy, layout, monkeypatch):
    if layout == "wide":  # the gallery-major product of embeddings of >= _WIDE dimensions, no pre-pass
        monkeypatch.setattr(neighbours, "_WIDE", D)
    small_chunks = layout == "chunks_query_blocks_top_k_blocks"
    if small_chunks:
        # 1000 rows in chunks of 384 (weighted_l1: 64): the third chunk is shifted back to [640, 1024)
        # and masked below 768 and from 1000 on; 5 queries in blocks of 4 (weighted_l1: 1), the last
        # one unpadded; each chunk's top-k by its best blocks of 16 rows.
        monkeypatch.setattr(neighbours, "_BUDGET", 2048)
        monkeypatch.setattr(neighbours, "_MAX_CHUNK", 384)
        monkeypatch.setattr(neighbours, "_QUERY_BLOCK", 4)
        monkeypatch.setattr(neighbours, "_BLOCK", 16)
    params = _params(energy)
    gallery, queries, labels = _data()
    index = Index.build(params, gallery, labels)
    assert (index._gallery.gallery.rows16 is None) == (layout == "wide" or energy == "weighted_l1")
    reference = _brute_force(params, gallery, queries)
    scores, ids = index.search(queries, k=7)
    assert scores.shape == ids.shape == (5, 7) and scores.dtype == np.float32 and ids.dtype == np.int64
    _assert_ranking(scores, ids, reference)
    # one query, and k = the whole gallery (k > chunk: the running merge keeps more than a chunk)
    s1, i1 = index.search(queries[:1], k=1)
    _assert_ranking(s1, i1, reference[:1])
    if small_chunks:
        s_all, i_all = index.search(queries[:2], k=G)
        _assert_ranking(s_all, i_all, reference[:2])
        assert sorted(i_all[0].tolist()) == list(range(G))


def test_top_k_by_blocks_equals_lax_top_k():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, size=(6, 1024)).astype(np.float32)  # many ties
    keys[1] = -np.inf
    keys[1, [5, 700, 1000]] = [3.0, 2.0, 3.0]  # fewer finite keys than k
    keys[2, :900] = -np.inf
    for k in (1, 4, 10):
        want, _ = jax.lax.top_k(keys, k)
        got, cols = neighbours._top_k(jax.numpy.asarray(keys), k, 128)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.take_along_axis(keys, np.asarray(cols), 1), want)
        assert all(len(set(row)) == k for row in np.asarray(cols).tolist())


def _certain(index, queries, k):
    """Whether the bfloat16 pre-pass of each single query settles its top-k."""
    out = []
    energy, gallery = energies.get(index.energy), index._gallery.gallery
    for q in queries:
        q = energy.prepare(jax.numpy.asarray(q[None]))
        plan = neighbours._plan(energy, 1, k, D, gallery.rows.shape[0], prepass=True)
        out.append(bool(neighbours._candidates(energy, k, plan, gallery, q)[1]))
    return out


@pytest.mark.parametrize("energy_", ["euclidean", "cosine"])
def test_single_queries_by_bfloat16_pass_are_exact(energy_, monkeypatch):
    params = _params(energy_)
    gallery, queries, labels = _data()
    index = Index.build(params, gallery, labels)
    reference = _brute_force(params, gallery, queries)
    for k in (1, 7):
        assert all(_certain(index, queries, k))  # well-separated items: settled by the pre-pass
        for i in range(len(queries)):
            _assert_ranking(*index.search(queries[i : i + 1], k), reference[i : i + 1])

    # Near-duplicates (300 noisy copies of one vector) are closer together than bfloat16 can tell
    # apart: the pre-pass cannot settle them, and the float32 pass (here in chunks) answers.
    monkeypatch.setattr(neighbours, "_BUDGET", 256)
    monkeypatch.setattr(neighbours, "_MAX_CHUNK", 128)
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=D)).astype(np.float32) + 0.5
    close = (base + 0.05 * rng.normal(size=(300, D))).astype(np.float32)
    near = (base + 0.05 * rng.normal(size=(3, D))).astype(np.float32)
    index = Index.build(params, close, labels[:300])
    assert not any(_certain(index, near, 5))
    reference = _brute_force(params, close, near)
    for i in range(3):
        _assert_ranking(*index.search(near[i : i + 1], 5), reference[i : i + 1])


def test_weighted_l1_chunks_stay_small_for_the_paper_model():
    dim = siamax.MODELS["paper"].embedding_dim
    block = neighbours.query_block("weighted_l1", dim)
    for q in (1, block):
        chunk = neighbours.chunk_rows("weighted_l1", q, dim, capacity=100 * 1024)
        assert q * chunk * dim <= neighbours._BUDGET and chunk >= neighbours._MIN_L1_CHUNK


def test_matches_lookup_and_paths():
    params = _params("cosine")
    gallery, queries, labels = _data(n=50)
    paths = [f"/gallery/{i}.png" for i in range(50)]
    index = Index.build(params, gallery, labels, paths)
    scores, ids = index.search(queries, k=3)
    found = index.matches(queries, k=3)
    assert [[m.id for m in row] for row in found] == ids.tolist()
    first = found[0][0]
    assert isinstance(first, Match) and first.label == labels[ids[0, 0]] and first.path == paths[ids[0, 0]]
    assert first.score == pytest.approx(float(scores[0, 0]))
    assert index.lookup(ids).tolist() == [[labels[i] for i in row] for row in ids.tolist()]
    assert index.paths == paths and index.labels == labels and len(index) == 50


def test_repeated_searches_do_not_recompile():
    params = _params("euclidean")
    gallery, queries, labels = _data(n=300)
    index = Index.build(params, gallery[:200], labels[:200])
    index.search(queries, k=3)
    compiled = neighbours._search._cache_size()
    index.search(queries + 0.5, k=3)
    index.search(queries[:3], k=3)  # 5 queries pad to 8, 3 to 4: one more program
    index.search(queries[:4] * 2, k=3)
    assert neighbours._search._cache_size() == compiled + 1
    index.add(gallery[200:], labels[200:])  # still within the first 1024-row block
    index.search(queries, k=3)
    assert neighbours._search._cache_size() == compiled + 1


def test_add_and_remove(energy):
    params = _params(energy)
    gallery, queries, labels = _data(n=600)
    index = Index.build(params, gallery[:250], labels[:250])
    assert index.add(gallery[250:], labels[250:]).tolist() == list(range(250, 600))
    whole = Index.build(params, gallery, labels)
    for got, want in zip(index.search(queries, 5), whole.search(queries, 5)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(index.embeddings), gallery)

    # by label: every item of the class goes, the others keep their order (and get new ids)
    assert index.remove("class3") == sum(label == "class3" for label in labels)
    keep = np.array([label != "class3" for label in labels])
    rest = Index.build(params, gallery[keep], [x for x, k in zip(labels, keep) if k])
    assert index.labels == rest.labels
    scores, ids = index.search(queries, 5)
    _assert_ranking(scores, ids, _brute_force(params, gallery[keep], queries))
    assert "class3" not in index.lookup(ids)

    # by id, several at once and from a NumPy array
    n = len(index)
    assert index.remove(np.array([0, n - 1, 5])) == 3 and len(index) == n - 3
    assert index.remove(7) == 1
    assert index.remove(["class1", "class2"]) > 0
    _assert_ranking(*index.search(queries, 5), _brute_force(params, np.asarray(index.embeddings), queries))

    with pytest.raises(InputError, match=r"not in the index: \['class3'\]"):
        index.remove("class3")
    with pytest.raises(InputError, match="out of range"):
        index.remove([len(index)])
    with pytest.raises(InputTypeError, match="not a mix"):
        index.remove(["class4", 0])


def test_bad_arguments_raise_helpfully():
    params = _params("euclidean")
    gallery, queries, labels = _data(n=20)
    empty = Index(params)
    with pytest.raises(InputError, match="the index is empty"):
        empty.search(queries, 1)
    index = Index.build(params, gallery, labels)
    with pytest.raises(InputError, match="k=21 is larger than the index, which holds 20 items"):
        index.search(queries, 21)
    for k in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="k must be a positive int"):
            index.search(queries, k)
    with pytest.raises(InputError, match=r"expected \(B, 24\) embeddings"):
        index.search(queries[:, :10], 1)
    with pytest.raises(InputError, match="NaN"):
        index.search(np.full((1, D), np.nan, np.float32), 1)
    with pytest.raises(InputError, match="labels has 3 entries for 20 embeddings"):
        Index.build(params, gallery, labels[:3])
    with pytest.raises(InputTypeError, match="labels must be str"):
        Index.build(params, gallery, list(range(20)))
    with pytest.raises(InputError, match="paths has 1 entries"):
        Index.build(params, gallery, labels, paths=["a.png"])
    with pytest.raises(ConfigError, match="backend must be one of"):
        Index(params, backend="annoy")
    with pytest.raises(InputTypeError, match="siamax.Params"):
        Index(params.weights)
    assert len(index) == 20  # a failed call changes nothing


def test_save_load_round_trip(energy, tmp_path):
    params = _params(energy)
    gallery, queries, labels = _data(n=300)
    paths = [None if i % 3 else f"img/{i}.png" for i in range(300)]
    index = Index.build(params, gallery, labels, paths)
    path = index.save(tmp_path / "gallery.npz")
    assert path == tmp_path / "gallery.npz" and not list(tmp_path.glob("*.tmp"))
    for loaded in (Index.load(path, params), Index.load(path)):  # without params: the file's head
        assert loaded.labels == labels and loaded.paths == paths and loaded.energy == energy
        assert loaded.fingerprint == index.fingerprint == checkpoint.fingerprint(params)
        for got, want in zip(loaded.search(queries, 4), index.search(queries, 4)):
            np.testing.assert_array_equal(got, want)
    assert index.save(tmp_path / "run").name == "index.npz"  # a directory gets DIR/index.npz
    assert len(Index.load(tmp_path / "run", params)) == 300


def test_fingerprint_is_the_model():
    a, b = _params("cosine", seed=0), _params("cosine", seed=1)
    assert checkpoint.fingerprint(a) == checkpoint.fingerprint(jax.tree.map(np.array, a))
    assert checkpoint.fingerprint(a) != checkpoint.fingerprint(b)
    assert checkpoint.fingerprint(a) != checkpoint.fingerprint(a.replace(spec=a.spec.replace(dtype="bfloat16")))
    # the conv implementation computes the same maths: the same model
    assert checkpoint.fingerprint(a) == checkpoint.fingerprint(a.replace(spec=a.spec.replace(conv_impl="direct")))


def test_load_refuses_another_models_index(tmp_path):
    params, other = _params("cosine", seed=0), _params("cosine", seed=1)
    gallery, _, labels = _data(n=30)
    path = Index.build(params, gallery, labels).save(tmp_path / "g.npz")
    with pytest.raises(ModelError, match="built with another model") as err:
        Index.load(path, other)
    assert checkpoint.fingerprint(params) in str(err.value) and checkpoint.fingerprint(other) in str(err.value)
    with pytest.raises(ModelError, match="another model"):
        Index.load(path, _params("euclidean"))


def test_load_refuses_files_that_are_not_indexes(tmp_path):
    params = _params("cosine")
    text = tmp_path / "notes.npz"
    text.write_text("not an index")
    model = checkpoint.export(params, tmp_path / "model.msgpack")
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, embeddings=np.zeros((2, D), np.float32))
    single = tmp_path / "one.npy"
    np.save(single, np.zeros(3))
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, meta=np.array([{"format": "siamax-index/1"}], dtype=object))
    for path in (text, model, arrays, single, pickled):
        with pytest.raises(ModelError, match="is not a siamax index file"):
            Index.load(path, params)
    with pytest.raises(DataError, match="no siamax index at"):
        Index.load(tmp_path / "missing.npz")


def test_load_refuses_a_damaged_index(tmp_path):
    params = _params("euclidean")
    gallery, _, labels = _data(n=30)
    path = Index.build(params, gallery, labels).save(tmp_path / "g.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["embeddings"] = arrays["embeddings"][:20]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ModelError, match="damaged index"):
        Index.load(tmp_path / "cut.npz", params)


# ---- faiss


@pytest.fixture(scope="module")
def faiss():
    try:
        import faiss
    except ImportError:
        # A test dependency: without it Index(backend="faiss") is untested, which is a broken setup, not a skip.
        pytest.fail("faiss-cpu is not installed: pip install -e '.[test]'")
    return faiss


@pytest.mark.parametrize("energy_", ["euclidean", "cosine"])
def test_faiss_backend_equals_exact(faiss, energy_, tmp_path):
    params = _params(energy_)
    gallery, queries, labels = _data(n=700, q=25)  # 25 queries: faiss's BLAS path (it switches at 20)
    exact = Index.build(params, gallery[:500], labels[:500])
    flat = Index.build(params, gallery[:500], labels[:500], backend="faiss")
    assert flat.backend == "faiss" and isinstance(flat.embeddings, np.ndarray)
    for idx in (exact, flat):
        idx.add(gallery[500:], labels[500:])
        idx.remove(["class0", "class5"])
    reference = _brute_force(params, np.asarray(exact.embeddings), queries)
    for q in (queries, queries[:3]):  # and faiss's direct path for few queries
        got, want = flat.search(q, 6), exact.search(q, 6)
        _assert_ranking(*got, reference[: len(q)])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got[1], want[1])  # random data: no ties
    loaded = Index.load(flat.save(tmp_path / "f.npz"), params, backend="faiss")
    np.testing.assert_array_equal(loaded.search(queries, 6)[1], exact.search(queries, 6)[1])


def test_faiss_backends_refuse_weighted_l1():
    for backend in ("faiss", "hnsw"):
        with pytest.raises(
            ConfigError, match=f"backend='{backend}'.*weighted_l1.*is not a faiss metric.*backend='jax'"
        ):
            Index(_params("weighted_l1"), backend=backend)


# ---- approximate: HNSW


@pytest.mark.parametrize("energy_", ["euclidean", "cosine"])
def test_hnsw_finds_what_exact_search_finds_and_scores_it_exactly(faiss, energy_, tmp_path):
    """On a small gallery the graph's search (efSearch >= the gallery) is exhaustive: the same ids as
    exact search; on any gallery the scores of what it finds are the model's (rescored exactly)."""
    params = _params(energy_)
    gallery, queries, labels = _data(n=300, q=25)
    exact, approx = Index.build(params, gallery, labels), Index.build(params, gallery, labels, backend="hnsw")
    assert approx.approximate and not exact.approximate and approx.backend == "hnsw"
    for q in (queries, queries[:1]):
        got, want = approx.search(q, 6), exact.search(q, 6)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    # changes: add extends the graph, remove rebuilds it; both keep the answers exact here
    more, _, more_labels = _data(n=100, seed=3)
    for idx in (exact, approx):
        idx.add(more, more_labels)
        idx.remove(["class2"])
    np.testing.assert_array_equal(approx.search(queries, 6)[1], exact.search(queries, 6)[1])
    # saved with its graph: loaded into the same backend by default, the graph reused (not rebuilt)
    assert approx.recall(5, queries=50) == 1.0 and exact.recall(5) == 1.0
    loaded = Index.load(approx.save(tmp_path / "h.npz"), params)
    assert loaded.backend == "hnsw" and loaded.measured_recall == approx.measured_recall
    assert faiss.serialize_index(loaded._gallery.index).tobytes() == approx._gallery.graph().tobytes()
    np.testing.assert_array_equal(loaded.search(queries, 6)[1], exact.search(queries, 6)[1])
    assert Index.load(tmp_path / "h.npz", params, backend="jax").backend == "jax"  # or into another backend
    assert Index.load(exact.save(tmp_path / "e.npz")).backend == "jax"


def test_hnsw_recall_is_measured_against_exact_search(faiss, monkeypatch):
    """recall@k: the share of the exact k best (each query a gallery item, left out of both) that the
    graph returns. A starved search (efSearch 1, one link per node) misses many; the default finds
    nearly all on clustered data."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, D)) * 3
    gallery = (centres[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, D))).astype(np.float32)
    labels = [str(i) for i in range(4000)]
    params = _params("euclidean")
    good = Index.build(params, gallery, labels, backend="hnsw")
    assert good.recall(10, queries=300) >= 0.95
    assert good.measured_recall == {"k": 10, "queries": 300, "recall": good.recall(10, queries=300)}
    monkeypatch.setattr(index_module._HnswGallery, "M", 2)
    monkeypatch.setattr(index_module._HnswGallery, "EF_CONSTRUCTION", 4)
    monkeypatch.setattr(index_module._HnswGallery, "EF_SEARCH", 1)
    starved = Index.build(params, gallery, labels, backend="hnsw")
    assert 0.0 <= starved.recall(10, queries=300) < good.measured_recall["recall"] - 0.05
    starved.add(gallery[:1], ["x"])
    assert starved.measured_recall is None  # a changed gallery has not been measured
    with pytest.raises(InputError, match="recall: k must be in 1..4000"):
        starved.recall(4001)


def test_a_damaged_hnsw_graph_is_refused(faiss, tmp_path):
    params = _params("cosine")
    gallery, _, labels = _data(n=50)
    path = Index.build(params, gallery, labels, backend="hnsw").save(tmp_path / "h.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["hnsw_graph"] = arrays["hnsw_graph"][:100]
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match="damaged index: its HNSW graph"):
        Index.load(path, params)


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'siamax\[faiss\]'") as err:
        Index(_params("cosine"), backend="faiss")
    assert isinstance(err.value, UserError)


# ---- a gallery in parts: files, or one part per process


def test_a_gallery_in_shards_answers_as_one_index(energy):
    params = _params(energy)
    gallery, queries, labels = _data(n=300, q=7)
    gallery[150] = gallery[10]  # the same item in two shards: a tie, broken by the lower id as one index does
    whole = Index.build(params, gallery, labels, paths=[f"f{i}.png" for i in range(300)])
    parts = whole.shards(3)
    assert [len(p) for p in parts] == [100, 100, 100] and sum((p.labels for p in parts), []) == labels
    assert sum((p.paths for p in parts), []) == whole.paths
    for k in (1, 5, 120):
        s, i = whole.search(queries, k)
        s2, i2 = index_module.search_shards(parts, queries, k)
        np.testing.assert_array_equal(i2, i)
        np.testing.assert_array_equal(s2, s)
    with pytest.raises(InputError, match="k=301"):
        index_module.search_shards(parts, queries, 301)
    other = Index.build(_params(energy, seed=1), gallery[:5], labels[:5])
    with pytest.raises(ModelError, match="different models"):
        index_module.search_shards([parts[0], other], queries, 3)
    with pytest.raises(InputError, match="shards: n must be in 1..300"):
        whole.shards(301)


def _run_two_processes(script: str, *args: str, xla_flags: str) -> None:
    """``script`` in two local processes of one jax.distributed run (argv: address, process id, ``args``)."""
    import os
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    keep = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("XLA_", "JAX_", "SIAMAX_COORD"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, address, str(j), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for j in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out


_PART_SCRIPT = """
import sys
import numpy as np
from siamax import sharding
from siamax.index import Index, search_across_processes
address, me, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sharding.initialize_distributed(address, 2, me)
part = Index.load(f"{folder}/part{me}.npz")
s, i = search_across_processes(part, np.load(f"{folder}/queries.npy"), 10)
np.savez(f"{folder}/answer{me}.npz", scores=s, ids=i)
"""


@pytest.mark.slow  # two processes
def test_two_processes_each_holding_a_shard_answer_as_one_index(tmp_path, one_device_xla_flags):
    params = _params("cosine")
    gallery, queries, labels = _data(n=301, q=9)
    whole = Index.build(params, gallery, labels)
    for j, part in enumerate(whole.shards(2)):
        part.save(tmp_path / f"part{j}.npz")
    np.save(tmp_path / "queries.npy", queries)
    _run_two_processes(_PART_SCRIPT, str(tmp_path), xla_flags=one_device_xla_flags)
    s, i = whole.search(queries, 10)
    for j in range(2):
        answer = np.load(tmp_path / f"answer{j}.npz")
        np.testing.assert_array_equal(answer["ids"], i)
        np.testing.assert_array_equal(answer["scores"], s)


_BUILD_SCRIPT = """
import sys
from siamax import cli
address, me, model, gallery, out = sys.argv[1:]
sys.exit(cli.main(["index", "build", model, gallery, out, "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", me]))
"""


@pytest.mark.slow  # two processes
def test_index_build_by_two_processes_each_embedding_its_share_is_one_process_s(tmp_path, one_device_xla_flags):
    from siamax import api, cli
    from tests.test_cli import _tiny_folder

    model = checkpoint.export(api.init(jax.random.key(0), "tiny"), tmp_path / "m" / "model.msgpack",
                              metadata={"ink": "dark"})  # fmt: skip
    gallery = _tiny_folder(tmp_path / "gallery", classes=7, per_class=5)  # 35 images: shares of 18 and 17
    assert cli.main(["index", "build", str(model.parent), str(gallery), str(tmp_path / "one")]) == 0
    _run_two_processes(_BUILD_SCRIPT, str(model.parent), str(gallery), str(tmp_path / "two"),
                       xla_flags=one_device_xla_flags)  # fmt: skip
    one, two = (Index.load(tmp_path / n / "index.npz") for n in ("one", "two"))
    np.testing.assert_array_equal(np.asarray(two.embeddings), np.asarray(one.embeddings))
    assert list(two.labels) == list(one.labels) and list(two.paths) == list(one.paths)
