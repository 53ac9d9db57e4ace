"""What the ``siamax`` command does, as library functions; ``siamax/cli.py`` only parses and prints.

For a folder of one's own images (``DIR/<class>/<image>`` or ``DIR/<group>/<class>/<image>``,
``siamax.data.image_folder``):

* :func:`train_folder`: split the classes (train / validation / test, a manifest), train with early
  stopping on the validation classes and a time budget, export the model with the same/different
  threshold chosen on the validation classes, and score the held-out test classes;
* :func:`evaluate_table`: every class new to the model: verification (ROC AUC, EER, accuracy at the
  model's threshold), N-way K-shot one-shot accuracy, retrieval (P@1, R@5, MAP@R), each next to raw
  pixels (Euclidean) on exactly the same pairs, trials and queries;
* :func:`verify`, :func:`identify`, :func:`build_index` / :func:`search_index`: same or different,
  the nearest classes of a gallery, the same with the gallery's embeddings computed once and stored.

Every image reaches the tower by the one route (``image_folder`` / ``image_files`` ->
``model_format``), with the ink polarity the model was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from siamax import api, checkpoint, config, evaluate, experiment, metrics, report, rng, sharding, train
from siamax import data as sd
from siamax.errors import InputError, ModelError
from siamax.index import INDEX_NAME, Index

MODEL_NAME = checkpoint.EXPORT_NAME


@dataclasses.dataclass(frozen=True)
class Model:
    """An exported model and what was chosen with it: the same/different threshold and the ink polarity."""

    params: api.Params
    threshold: float  # p >= threshold means "same"
    threshold_from: str  # "validation" (chosen on validation classes) or "default" (0.5: none was stored)
    ink: str  # the polarity its training images had: "dark", "light" (or "auto": unknown, tell from the images)
    path: Path


def load_model(path: str | Path) -> Model:
    """A work directory or a ``model.msgpack`` (errors: DataError if missing, ModelError if not a model)."""
    params = checkpoint.load(path)
    meta = checkpoint.read_metadata(path)
    threshold = meta.get("threshold")
    ink = meta.get("ink", "auto")
    if ink not in ("dark", "light", "auto"):
        raise ModelError(f"{path}: the model's stored ink {ink!r} is not 'dark' or 'light'")
    return Model(
        params=params,
        threshold=0.5 if threshold is None else float(threshold),
        threshold_from="default" if threshold is None else "validation",
        ink=ink,
        path=Path(path),
    )


def _embed_table(params: api.Params, table: sd.LabelledImages) -> jax.Array:
    return evaluate.embed_images(params, np.asarray(table.images), ink="light")[: table.n_images]


def _pair_scores(params, emb, i1, i2) -> np.ndarray:
    return evaluate._score_index_pairs(params, emb, i1, i2, chunk=4096)


# ---------------------------------------------------------------------------------------------
# evaluate


def evaluate_table(
    model: Model,
    table: sd.LabelledImages,
    *,
    n_way: int = 5,
    shots: int = 1,
    trials: int = 400,
    pairs: int = 10_000,
    eval_seed: int = 0,
) -> dict:
    """Score ``model`` on ``table``, whose classes it has never seen, next to raw pixels (Euclidean) on
    exactly the same pairs, trials and queries. All draws come from ``eval_seed`` alone.

    ``verification``: ``make_pairs`` over the table (half same, half different), ROC AUC, EER and
    accuracy at the model's stored threshold (for pixels, which have none: at their EER threshold on
    these very pairs, an optimistic figure). ``oneshot``: ``n_way``-way ``shots``-shot episodes with
    one query per class, ``trials`` queries in all. ``retrieval``: every image a query against all
    others (leave-one-out): precision@1, recall@5, MAP@R.
    """
    sd.require_classes(table, max(n_way, 2), f"a {n_way}-way {shots}-shot evaluation", per_class=shots + 1)
    seeds = rng.eval_seeds(eval_seed)
    params = model.params
    emb = _embed_table(params, table)
    p = sd.make_pairs(table, pairs, seed=seeds["verification_test"])
    scores = _pair_scores(params, emb, p.i1, p.i2)
    tasks = sd.episodes(
        table, n_way=n_way, k_shot=shots, n_query=1, n_episodes=math.ceil(trials / n_way), seed=seeds["test_tasks"]
    )
    shuffle = seeds["test_candidates"]
    pixels = np.asarray(table.images, np.float32).reshape(table.n_images, -1) / sd.labelled.INK
    pixel_scores = -np.linalg.norm(pixels[p.i1] - pixels[p.i2], axis=1)
    pixel_verification = metrics.verification_report(pixel_scores, p.label)
    pixel_verification["threshold_from"] = "eer_on_these_pairs"
    way = f"{n_way}way" + (f"_{shots}shot" if shots > 1 else "")
    head = params.weights["head"]
    return {
        "data": {"name": table.name, "images": table.n_images, "classes": table.n_classes, "groups": table.n_groups},
        "verification": {
            **metrics.verification_report(scores, p.label, threshold=model.threshold),
            "threshold_from": model.threshold_from,
            "pairs": int(len(p.label)),
        },
        "oneshot": {way: evaluate.one_shot_accuracy(params, tasks, seed=shuffle)},
        "retrieval": metrics.retrieval_report(np.asarray(emb), table.labels, params.spec.energy, head, k=5),
        "pixel_baseline": {
            "verification": pixel_verification,
            "oneshot": {way: evaluate.nearest_neighbour(tasks, "euclidean", seed=shuffle)},
            "retrieval": metrics.retrieval_report(pixels, table.labels, "euclidean", None, k=5),
        },
        "_plot": {"scores": scores, "labels": p.label, "pixel_scores": pixel_scores, "embeddings": np.asarray(emb)},
    }


def save_evaluation(results: dict, model: Model, table: sd.LabelledImages, out: Path, *, plots: bool = True) -> dict:
    """Write ``out/evaluation.json`` (and the plots); returns the results without their plotting data."""
    out.mkdir(parents=True, exist_ok=True)
    plot = results.pop("_plot")
    results = {**results, "model": str(model.path), **report.provenance()}
    (out / "evaluation.json").write_text(json.dumps(results, indent=1))
    if plots:
        names = [table.class_names[c] for c in table.labels]
        index = Index.build(model.params, plot["embeddings"], names, paths=table.paths)
        report.save_evaluation_plots(results, plot, table, index, out)
    return results


# ---------------------------------------------------------------------------------------------
# train


def train_folder(
    cfg: config.Config,
    data: str | Path,
    workdir: str | Path,
    *,
    preset: str,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_minutes: float | None = None,
    ink: str = "auto",
    layout: str = "auto",
    progress: bool = True,
) -> dict:
    """Train on a folder's classes in ``workdir`` (resumable: the same command carries on), export the
    model with its validation threshold and ink, and score the held-out test classes."""
    t_start = time.perf_counter()
    workdir = Path(workdir)
    data = Path(data).expanduser().resolve()
    table, folder = sd.image_folder(data, size=cfg.spec, layout=layout, ink=ink, progress=progress)
    print(folder.summary())
    train_t, val_t, test_t = sd.class_splits(table, fractions, seed=cfg.data.split_seed).parts()
    seeds = rng.eval_seeds(cfg.eval.eval_seed)
    # Before any training: the validation classes choose the checkpoint, the test classes are the report.
    for part, what in (
        (val_t, "the validation classes (choosing the checkpoint)"),
        (test_t, "the test classes (the report)"),
    ):
        if part.n_classes < 2:
            raise InputError(
                f"{what} would be {part.n_classes} class(es) of {table.n_classes}: {what} need 2 at least; give "
                "more classes or other --fractions (train,validation,test)"
            )
    experiment.claim_workdir(workdir, cfg, preset, extra={"data": str(data), "fractions": list(fractions)})
    # The manifest: written on the first run, and a rerun on a changed folder is refused.
    splits = sd.class_splits(table, fractions, seed=cfg.data.split_seed, manifest=workdir / "splits.json")
    train_t, val_t, test_t = splits.parts()
    n_way = min(20, val_t.n_classes)
    val_tasks = sd.episodes(
        val_t,
        n_way=n_way,
        n_query=1,
        n_episodes=math.ceil(cfg.eval.val_trials / n_way),
        seed=seeds["validation_tasks"],
    )
    print(
        f"classes: {train_t.n_classes} train, {val_t.n_classes} validation, {test_t.n_classes} test "
        f"(images {train_t.n_images} / {val_t.n_images} / {test_t.n_images}); validation: {len(val_tasks)} "
        f"{n_way}-way one-shot tasks"
    )
    budget = None if max_minutes is None else max(0.0, 60 * max_minutes - (time.perf_counter() - t_start))
    state, summary, sampler = experiment.train_on(
        cfg, workdir, train_t, val_tasks, progress=progress, max_seconds=budget
    )
    best = sharding.local_copy(train.restore_best(state, workdir))
    val_pairs = sd.make_pairs(val_t, cfg.eval.verification_pairs, seed=seeds["verification_validation"])
    val_scores = _pair_scores(best, _embed_table(best, val_t), val_pairs.i1, val_pairs.i2)
    threshold, val_accuracy = evaluate.best_threshold(val_scores, val_pairs.label)
    checkpoint.export(
        best,
        workdir,
        metadata={
            "preset": preset,
            "config": cfg.to_dict(),
            "best_epoch": summary["best_epoch"] + 1,
            "threshold": threshold,
            "threshold_validation_accuracy": val_accuracy,
            "ink": folder.ink,
            "data": str(data),
        },
    )
    model = load_model(workdir)
    results = evaluate_table(model, test_t, n_way=min(5, test_t.n_classes), eval_seed=cfg.eval.eval_seed)
    results["training"] = {
        "epochs": summary["epoch"],
        "best_epoch": summary["best_epoch"] + 1,
        "best_val_accuracy": summary["best_accuracy"],
        "stopped_by_time": bool(summary.get("stopped_by_time")),
        "train_seconds": summary["train_seconds"],
        "images_per_s": summary["epoch"]
        * sampler.steps_per_epoch
        * sampler.images_per_step
        / max(summary["train_seconds"], 1e-9),
        "threshold": threshold,
        "threshold_validation_accuracy": val_accuracy,
        "folder": dataclasses.asdict(folder),
    }
    results["preset"], results["config"] = preset, cfg.to_dict()
    results["wall_seconds"] = time.perf_counter() - t_start
    results = save_evaluation(results, model, test_t, workdir)
    (workdir / "results.json").write_text((workdir / "evaluation.json").read_text())
    return results


# ---------------------------------------------------------------------------------------------
# verify, identify, index


def verify(model: Model, image_a: str | Path, image_b: str | Path) -> dict:
    """``{"probability", "same", "threshold"}`` for two image files."""
    x, _ = sd.image_files([image_a, image_b], size=model.params.spec, fallback=model.ink)
    p = float(api.score(model.params, x[:1], x[1:])[0])
    return {"probability": p, "same": p >= model.threshold, "threshold": model.threshold}


def gallery_index(model: Model, gallery: str | Path, *, ink: str = "auto", progress: bool | None = None) -> Index:
    """The index of a class-folder gallery (one image per class is enough)."""
    table, folder = sd.image_folder(gallery, size=model.params.spec, ink=ink, min_images=1, progress=progress)
    if folder.skipped:
        print(folder.summary())
    emb = _embed_table(model.params, table)
    return Index.build(
        model.params,
        np.asarray(emb),
        [table.class_names[c] for c in table.labels],
        paths=[str(Path(folder.root) / p) for p in table.paths],
    )


def _top_classes(model: Model, index: Index, queries: Sequence[str | Path], k: int) -> list[dict]:
    """Per query, the ``k`` gallery classes with the highest score (a class scores its best image)."""
    labels = np.asarray(index.labels)
    classes = len(set(labels.tolist()))
    if not 1 <= k <= classes:
        raise InputError(f"k={k}, but the gallery has {classes} classes: choose k in 1..{classes}")
    x, _ = sd.image_files(queries, size=model.params.spec, fallback=model.ink)
    q = np.asarray(api.embed(model.params, x))
    # The k best classes lie among the k * (most images of one class) best items, whatever the ranking.
    most = max(np.unique(labels, return_counts=True)[1])
    scores, ids = index.search(q, min(len(labels), k * int(most)))
    out = []
    for path, s_row, i_row in zip(queries, np.asarray(scores), np.asarray(ids)):
        matches, seen = [], set()
        for s, i in zip(s_row, i_row):
            if labels[i] not in seen:
                seen.add(labels[i])
                matches.append({"label": str(labels[i]), "score": float(s), "path": index.paths[i]})
            if len(matches) == k:
                break
        out.append({"query": str(path), "matches": matches})
    return out


def identify(model: Model, gallery: str | Path, queries: Sequence[str | Path], k: int = 5) -> list[dict]:
    """The top-k classes of ``gallery`` for each query image."""
    return _top_classes(model, gallery_index(model, gallery), queries, k)


def build_index(model: Model, gallery: str | Path, out: str | Path) -> Path:
    """Embed ``gallery`` once into the index folder ``out``: ``index.msgpack`` and a copy of the model."""
    out = Path(out)
    if out.exists() and not (out / INDEX_NAME).exists():
        if not out.is_dir() or any(out.iterdir()):
            raise InputError(f"{out} exists and is not a siamax index folder: choose a new path")
    index = gallery_index(model, gallery)
    out.mkdir(parents=True, exist_ok=True)
    src = model.path / MODEL_NAME if model.path.is_dir() else model.path
    shutil.copyfile(src, out / MODEL_NAME)
    index.save(out / INDEX_NAME)
    return out


def search_index(index_dir: str | Path, queries: Sequence[str | Path], k: int = 5) -> list[dict]:
    """What :func:`identify` answers, from an index folder made by :func:`build_index`."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_NAME).is_file():
        raise InputError(
            f"{index_dir} is not a siamax index folder (no {INDEX_NAME}); make one with 'siamax index build'"
        )
    model = load_model(index_dir / MODEL_NAME)
    index = Index.load(index_dir / INDEX_NAME, model.params)
    return _top_classes(model, index, queries, k)
