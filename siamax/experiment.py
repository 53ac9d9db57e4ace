"""The one pipeline: train on a dataset, choose the checkpoint on its validation data, export the model
with its same/different threshold, and score the dataset's test sets with the evaluators.

``train_and_evaluate(cfg, workdir, dataset)`` is what the main job (``experiments/omniglot_oneshot``),
the MNIST transfer and ``siamax train`` run; ``evaluate(params, tests)`` is its last stage, which
``siamax evaluate`` runs alone. A dataset is an adapter of ``siamax.data.adapters``: it gives the
training table, the validation tasks (the checkpoint) and pairs (the threshold), and its named test
sets. Model selection reads validation data only; the test sets are built after training and scored
once. Every archive the run will read is resolved (downloaded where it can be) before the first step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from siamax import api, augment, checkpoint, config, evaluators, metrics, optim, plots, provenance, rng, sharding, train
from siamax.data import adapters, packed, samplers
from siamax.errors import ConfigError, WorkdirError
from siamax.model import Ensemble, Params, init


def _eigenfaces(fit=None):
    if fit is None:
        raise ValueError(
            "the eigenfaces baseline is fitted on the run's training images: pass them (Prepared.baseline_fit)"
        )
    return evaluators.EigenfaceEmbedder().fit(fit)


# The baselines a test set may name: other embedders run through the same evaluator on the same trials.
# Each is made by ``BASELINES[name](fit)``: ``fit``, the run's training images in model format
# (``Prepared.baseline_fit``), is what a fitted baseline learns from (eigenfaces: its PCA), or None.
BASELINES = {
    "pixels": lambda fit=None: evaluators.PixelEmbedder("euclidean"),
    "pixels_cosine": lambda fit=None: evaluators.PixelEmbedder("cosine"),
    "eigenfaces": _eigenfaces,
    "mfcc_dtw": lambda fit=None: evaluators.MfccDtwEmbedder(),
    "mfcc_cosine": lambda fit=None: evaluators.MfccMeanEmbedder(),
}


def config_diff(a: dict, b: dict) -> dict:
    """{field: (a, b)} for the fields of two flat configs that differ (never mix runs of different configs).

    A config field that one side lacks (a run from before the field existed) counts as its default."""
    defaults = config.Config().flat()
    a, b = ({k: v for k, v in defaults.items() if k not in ab and k in (set(a) | set(b))} | ab for ab in (a, b))
    keys = sorted((set(a) | set(b)) - set(config.EVALUATION_ONLY))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def claim_workdir(
    workdir: Path, cfg: config.Config, preset: str, extra: dict | None = None, *, check_only: bool = False
) -> None:
    """Create ``workdir`` or check that it holds a run of exactly this config (and ``extra``: e.g. the data
    folder of ``siamax train``) (never mix runs). ``check_only``: refuse a foreign run, write nothing."""
    path = workdir / "config.json"
    mine = {"preset": preset, **cfg.flat(), **(extra or {})}
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WorkdirError(f"{path} is not readable ({e}); use another --workdir") from e
        changed = config_diff(theirs, mine)
        if changed:
            fields = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise WorkdirError(
                f"{workdir} holds a run with a different config ({fields}). Use another --workdir, or repeat the "
                "original settings to resume it."
            )
    elif sharding.is_primary() and not check_only:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(mine, indent=1, sort_keys=True))
        except OSError as e:
            raise WorkdirError(f"cannot write the work directory {workdir}: {e}") from e
    if not check_only:
        sharding.sync("claim_workdir")


def objective_of(cfg) -> train.Objective:
    """What the train step optimises for the config ``cfg``: its objective, augmentation, L2 and margin."""
    return train.Objective(
        kind=cfg.objective.kind,
        augment=cfg.data.augment,
        augment_ops=augment.op_names(cfg.data.augment_ops),
        l2=optim.l2_lambdas(cfg.optim, cfg.spec.layer_names),
        margin=cfg.margin,
        miner=cfg.objective.miner,
    )


def train_on(cfg, workdir: Path, train_table, val_tasks: list, *, progress=True, max_seconds=None, on_epoch=None):
    """Train (or resume) a model on ``train_table`` (a ``LabelledImages``) in ``workdir``, choosing the
    checkpoint by one-shot accuracy on ``val_tasks`` (validation data only).

    Returns ``(state, summary, sampler)``; the best checkpoint is in ``workdir`` (``train.restore_best``).
    """
    mesh = sharding.make_mesh(cfg.devices or None)
    candidates_seed = rng.eval_seeds(cfg.eval.eval_seed)["validation_candidates"]  # as pixels_on_validation
    sampler = samplers.make_sampler(
        cfg.data,
        cfg.objective.batch,
        train_table,
        cfg.seed,
        cfg.schedule.steps_per_epoch,
        shard=sharding.shard_of_process(),
    )
    params = init(rng.train_streams(cfg.seed)["init"], cfg.spec)
    tx, lr_of = optim.make_optimizer(cfg.optim, cfg.spec.layer_names, sampler.steps_per_epoch)
    state = sharding.replicate(train.create_train_state(params, tx, objective_of(cfg)), mesh)
    validation = evaluators.OneShot(val_tasks, seed=candidates_seed)

    def validate(p):
        return validation.run(sharding.local_copy(p))["accuracy"]

    state, summary = train.fit(
        state,
        sampler,
        epochs=cfg.schedule.epochs,
        patience=cfg.schedule.patience,
        validate=validate,
        workdir=workdir,
        seed=cfg.seed,
        place_batch=lambda b: sharding.shard_batch(b, mesh),
        lr_of=lr_of,
        progress=progress,
        max_seconds=max_seconds,
        on_epoch=on_epoch,
    )
    return state, summary, sampler


def table_identity(table) -> dict:
    """What a training table is, for the pack of it: its name, counts and one checksum of its pixels,
    labels and classes (another split, drawer selection, preset's data or input size changes it)."""
    h = hashlib.sha256()
    for lo in range(0, table.n_images, 8192):  # in slices: the table may be large, and on the device
        h.update(np.asarray(table.images[lo : lo + 8192]).tobytes())
    h.update(table.labels.tobytes() + table.groups.tobytes())
    h.update(json.dumps([table.class_names, table.group_names]).encode())
    return {"name": table.name, "images": table.n_images, "classes": table.n_classes, "sha256": h.hexdigest()}


def stream_from_pack(table, pack, spec, *, progress: bool = True):
    """``table`` (a run's training table, in memory) with its images read from the packed dataset
    ``pack`` instead, so that training streams (``siamax.data.samplers``): written there once, kept by a
    rerun (resume); a pack of another table is refused. The labels, classes and groups stay ``table``'s."""
    pack = Path(pack).expanduser().resolve()
    mine = table_identity(table)
    theirs = packed.read_plan(pack)
    if theirs is not None and theirs.get("identity") != mine:
        was = theirs.get("identity")
        what = f"{was['images']:,} images of {was['classes']:,} classes of {was['name']}" if was else theirs["source"]
        raise ConfigError(
            f"{pack} holds the pack of another training table ({what}, not this run's {mine['images']:,} images "
            f"of {mine['classes']:,} classes of {mine['name']}, or other pixels: another preset, split, drawers "
            "or input size); give another --pack folder, or the settings it was packed with"
        )
    if sharding.is_primary():  # one writer; the other processes read it once written (a shared folder)
        report = packed.pack_table(table, pack, identity=mine, progress=progress)
        print(f"training streams from {report.summary()}; validation and test stay in memory")
    sharding.sync("pack")
    on_disk, _ = packed.load_packed(pack, spec)
    return dataclasses.replace(table, images=on_disk.images)  # the same rows, in the same order


def pixels_on_validation(cfg, val_tasks: list) -> float:
    """Raw pixels' one-shot accuracy on the very validation trials that chose the checkpoint (same seed)."""
    seed = rng.eval_seeds(cfg.eval.eval_seed)["validation_candidates"]
    return evaluators.OneShot(val_tasks, seed=seed).run(evaluators.PixelEmbedder())["accuracy"]


def versus_pixels(model_accuracy: float, pixels_accuracy: float) -> str:
    """One plain line for the user: is the model better than raw pixels on the validation trials?"""
    line = f"validation one-shot: siamax {model_accuracy:.1%}, raw pixels {pixels_accuracy:.1%}"
    if model_accuracy > pixels_accuracy:
        return line
    return (
        f"{line}: the model is NOT better than raw pixels on these classes; comparing the images "
        "themselves (euclidean) would serve as well. Try more images per class, longer training or another preset"
    )


def _threshold(params, prepared: adapters.Prepared) -> tuple[float, float]:
    """The same/different threshold chosen on the dataset's validation pairs, and its accuracy there."""
    p = prepared.threshold_pairs
    scores = evaluators.score_pairs(evaluators.ModelEmbedder(params), prepared.threshold_images, p.i1, p.i2)
    t = metrics.choose_threshold(scores, p.label, prepared.threshold_rule)
    return t, metrics.accuracy_at(scores, p.label, t)


def test_sets(cfg, prepared: adapters.Prepared, rerun: str) -> dict:
    """The dataset's test sets that ``--test-sets`` names (all without it); ``rerun``: how the error
    message says to run it again."""
    tests = prepared.tests()
    only = cfg.eval.test_names
    unknown = sorted(set(only) - set(tests))
    if unknown:
        raise ConfigError(
            f"--test-sets: this dataset has no test sets {unknown}, only {list(tests)}. {rerun} with --test-sets "
            "naming some of those scores it"
        )
    return {n: tests[n] for n in tests if not only or n in only}  # only those named are drawn (LazySets)


def train_and_evaluate(
    cfg: config.Config,
    workdir: str | Path,
    dataset: adapters.Dataset,
    *,
    preset: str = "custom",
    progress: bool = True,
    plots_: bool = True,
    test: bool = True,
    max_seconds: float | None = None,
    on_epoch=None,
    pack: str | Path | None = None,
) -> dict:
    """Train (or resume) on ``dataset`` in ``workdir``, export the chosen model, score its test sets.

    Writes ``workdir/results.json`` (docs/architecture.md: the schema), the plots and
    ``model.msgpack`` (with the threshold chosen on validation pairs and the ink polarity); the callers
    print ``report.table(results)``. ``test=False`` stops after the export and returns the validation summary
    (``best_val_accuracy``, ``best_epoch``, ``epochs``, ``train_seconds``, ...) without building a
    test set: what model selection (``experiments.validation_sweep``, ``experiments.tune``) may read.
    ``max_seconds``: a time budget from the call, data loading included (training stops cleanly at
    an epoch boundary). ``on_epoch(epoch, val_accuracy)``: see ``train.fit``. ``pack``: a folder the
    training table is packed into (once) and streamed from (:func:`stream_from_pack`); the same batches.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    claim_workdir(workdir, cfg, preset, extra=dataset.identity, check_only=True)  # a foreign run: before any work
    adapters.archives(dataset, test)
    prepared = dataset.prepare_run(cfg)  # reads the data: a bad dataset fails before any file is written
    if pack is not None:  # a foreign pack is refused before the work directory is written
        prepared = dataclasses.replace(
            prepared, train=stream_from_pack(prepared.train, pack, cfg.spec, progress=progress)
        )
    data_seconds = time.perf_counter() - t_start
    claim_workdir(workdir, cfg, preset, extra=dataset.identity)
    if sharding.is_primary():
        prepared.write_manifest(workdir)
        print(prepared.summary)
    budget = None if max_seconds is None else max(0.0, max_seconds - (time.perf_counter() - t_start))
    state, summary, sampler = train_on(
        cfg,
        workdir,
        prepared.train,
        prepared.validation_tasks,
        progress=progress,
        max_seconds=budget,
        on_epoch=on_epoch,
    )
    # Every process restores the chosen checkpoint, as with every other multi-process Orbax call here;
    # process 0 exports it at once (the model survives a failing evaluation), with its threshold.
    best = sharding.local_copy(train.restore_best(state, workdir))
    validation = {
        "best_val_accuracy": summary["best_accuracy"],
        "best_epoch": summary["best_epoch"] + 1,
        "epochs": summary["epoch"],
        "train_seconds": summary["train_seconds"],
        "data_seconds": data_seconds,
    }
    if not sharding.is_primary():
        return validation if not test else {}
    threshold, threshold_accuracy = _threshold(best, prepared)
    metadata = {
        "preset": preset,
        "config": cfg.to_dict(),
        "best_epoch": summary["best_epoch"] + 1,
        "ink": prepared.ink,
        "threshold": threshold,
        "threshold_rule": prepared.threshold_rule,
        "threshold_validation_accuracy": threshold_accuracy,
        **dataset.identity,
    }
    checkpoint.export(best, workdir, metadata=metadata)
    model = checkpoint.load(workdir)  # what is scored is the exported file itself
    pixels_val = pixels_on_validation(cfg, prepared.validation_tasks)
    print(versus_pixels(summary["best_accuracy"], pixels_val))
    steps = summary["epoch"] * sampler.steps_per_epoch
    seconds = max(summary["train_seconds"], 1e-9)
    training = {
        "epochs": summary["epoch"],
        "best_epoch": summary["best_epoch"] + 1,
        "best_val_accuracy": summary["best_accuracy"],
        "steps": steps,
        "train_seconds": summary["train_seconds"],
        "stopped_by_time": bool(summary.get("stopped_by_time")),
        "objective": cfg.objective.kind,
        "pairs_per_s": steps * sampler.pairs_per_step / seconds,
        "images_per_s": steps * sampler.images_per_step / seconds,
        "threshold": threshold,
        "threshold_rule": prepared.threshold_rule,
        "threshold_validation_accuracy": threshold_accuracy,
        "pixels_val_accuracy": pixels_val,
    }
    if not test:
        return {**validation, "wall_seconds": time.perf_counter() - t_start}
    results = {"preset": preset, "seed": cfg.seed, "eval_seed": cfg.eval.eval_seed, "config": cfg.to_dict()}
    results["data"] = dict(prepared.info)
    tests = test_sets(cfg, prepared, f"The trained model is exported in {workdir}: the same command")
    results["test_sets"] = list(tests)
    scored, figures = evaluate(model, tests, progress=progress, fit=prepared.baseline_fit)
    results.update(scored)
    results.update(legacy_keys(results, prepared.legacy))
    results["training"] = training
    results.update(prepared.extra)
    if prepared.paper:
        results["paper"] = dict(prepared.paper)
    results.update(provenance.provenance(cfg))
    results["wall_seconds"] = time.perf_counter() - t_start
    provenance.write_json(workdir / "results.json", results)
    if plots_:
        history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        seed = rng.eval_seeds(cfg.eval.eval_seed)["report"]  # which trials the figure shows
        save_plots(model, results, figures, workdir, history=history, trial_grid=prepared.trial_grid, seed=seed)
        results["wall_seconds"] = time.perf_counter() - t_start
        provenance.write_json(workdir / "results.json", results)
    print(f"results, plots and the exported model are in {workdir}")
    return results


def legacy_keys(results: dict, legacy: Mapping[str, tuple[str, str]]) -> dict:
    """The keys earlier versions wrote, as copies of their sections (``one_nn`` = ``pixels/lake20``)."""
    return {key: results[a][b] for key, (a, b) in legacy.items() if b in results.get(a, {})}


def _put(out: dict, name: str, result: dict) -> None:
    """``result`` under ``name`` ("a/b" nests), its first grouping as "by", the others as ``by_<grouping>``."""
    by = result.pop("by", None)
    if isinstance(by, dict) and by and all(isinstance(v, dict) and "accuracy" not in v for v in by.values()):
        (first, groups), *others = by.items()
        result["by"] = groups
        for grouping, groups_ in others:
            out.setdefault(f"by_{grouping}", {})[name] = groups_
    elif by is not None:
        result["by"] = by
    head, _, tail = name.partition("/")
    if tail:
        out.setdefault(head, {})[tail] = result
    else:
        out[name] = result


def evaluate(
    params,
    tests: Mapping,
    *,
    progress: bool = True,
    fit=None,
) -> tuple[dict, dict]:
    """Score ``params`` (Params, a ``siamax.Ensemble`` or an embedder, e.g. ``evaluators.with_tta``) on
    every test set (``{name: adapters.TestSet}``), and each
    test set's baselines on the very same trials and pairs (each baseline made once, ``BASELINES[name](fit)``:
    ``fit`` the training images a fitted baseline learns from). Returns ``(results, figures)``: the
    JSON-able results (schema: module docstring of ``siamax.data.adapters``) and, per test set, what
    the plots need (verification scores per embedder, retrieval embeddings)."""
    model = evaluators.as_embedder(params)
    results: dict = {}
    figures: dict = {}
    baselines = {b: BASELINES[b](fit) for b in dict.fromkeys(b for ts in tests.values() for b in ts.baselines)}
    for name, ts in tqdm(tests.items(), desc="evaluating", unit="test set", disable=not progress, leave=False):
        evaluator = evaluators.make(ts.kind, **ts.args, **ts.model_args)
        _put(results, name, evaluator.run(model))
        figures[name] = {"siamax": evaluator.figures}
        for b in ts.baselines:
            baseline = evaluators.make(ts.kind, **ts.args)
            _put(results.setdefault(b, {}), name, baseline.run(baselines[b]))
            figures[name][b] = baseline.figures
    return results, figures


def save_plots(params, results: dict, figures: dict, out: Path, *, history=None, trial_grid=None, seed=0) -> None:
    """The figures of whatever was scored (by ``params``: what :func:`evaluate` took): learning curves,
    accuracy against N, one-shot trials, verification ROC and histograms, retrieval grid and embedding map."""
    model = evaluators.as_embedder(params)
    if history:
        plots.learning_curves(history, out)
    if "nway_within_alphabet" in results:
        plots.accuracy_vs_nway(results["nway_within_alphabet"], out)
    if trial_grid is not None:
        plots.trial_grid(model, trial_grid(), out / "oneshot_trials.png", seed=seed)
    v = figures.get("verification")
    if v and v["siamax"]:
        scores = {"siamax": v["siamax"]["scores"]}
        if v.get("pixels"):
            scores["raw pixels"] = v["pixels"]["scores"]
        plots.verification(
            scores, v["siamax"]["labels"], results["verification"]["threshold"], results["data"]["name"], out
        )
    r = figures.get("retrieval")
    if r and r["siamax"]:
        f = r["siamax"]
        plots.retrieval(model, f["embeddings"], f["images"], f["labels"], out)


def _members(model) -> int:
    """Networks in ``model``: an Ensemble's members, else 1."""
    return len(model.members) if isinstance(model, Ensemble) else 1


def evaluate_model(
    params,
    tests: Mapping,
    out: str | Path,
    *,
    name: str = "results.json",
    merge: bool = True,
    info: dict | None = None,
    plots_: bool = True,
    progress: bool = True,
    extra: dict | None = None,
    json_path: str | Path | None = None,
    tta: int = 1,
) -> dict:
    """``evaluate`` a stored model (Params or a ``siamax.Ensemble``; ``tta``: test-time augmentation,
    ``evaluators.with_tta``, its cost in ``results["cost"]``) on ``tests``; write the results with their
    provenance to ``out/name``
    (``merge``: added to what that file holds, as the transfer's ``--reuse`` adds ``mnist10`` to a run's
    results) and the plots to ``out``. What ``siamax evaluate`` (``evaluation.json``, never a training
    run's results.json) and ``experiments.mnist_transfer --reuse`` run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    results = json.loads(path.read_text()) if merge and path.exists() else {}
    model = evaluators.with_tta(params, tta)
    t0 = time.perf_counter()
    scored, figures = evaluate(model, tests, progress=progress)
    members = _members(params)
    results["cost"] = {"tta": tta, "members": members, "tower_passes_per_image": tta * members,
                       "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if info is not None:
        results["data"] = info
    for key, value in scored.items():
        if isinstance(value, dict) and isinstance(results.get(key), dict) and key in BASELINES:
            results[key].update(value)
        else:
            results[key] = value
    results.update(extra or {})
    results.update(provenance.provenance())
    provenance.write_json(path, results)
    if json_path is not None:
        provenance.write_json(json_path, results)
    if plots_:
        save_plots(model, results, figures, out)
    return results


def transfer_validation(params: Params, *, eval_seed: int = 0, trials: int = 400) -> dict:
    """10-way one-shot on MNIST's *training* set (never its test set), next to 1-NN on the same trials:
    how settings for the transfer experiment are chosen. ``{"accuracy", "ci95", "trials", "one_nn"}``."""
    from siamax import data as sd

    seeds = rng.eval_seeds(eval_seed)
    digits = sd.mnist_table(sd.load_mnist(), params.spec, "train")
    tasks = sd.mnist_tasks(digits, n_trials=trials, seed=seeds["transfer_validation"])
    oneshot = evaluators.OneShot(tasks, seed=seeds["validation_candidates"])
    result = oneshot.run(params)
    result["one_nn"] = evaluators.OneShot(tasks, seed=seeds["validation_candidates"]).run(BASELINES["pixels"]())
    return result


def ensemble_study(cfg, dataset, workdirs, out, *, tta=(1, 4), test: bool = True, progress: bool = True) -> dict:
    """Stored models of one dataset and config (``workdirs``: e.g. seeds 0-2 of a preset), and their
    ensemble, each at every test-time augmentation count of ``tta``, scored on the dataset's validation
    trials (those that chose each checkpoint: the same for every seed); the best on validation (ties:
    the fewest tower passes) is chosen, and with ``test`` it alone is scored on the test sets. Nothing
    is chosen by a test figure. Writes ``out/ensemble.json``: ``{"validation": {name: {accuracy,
    tower_passes, seconds}}, "chosen", "test": {...}, "members": [...]}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members, models = [checkpoint.load(w) for w in workdirs], {}
    for w, m in zip(workdirs, members):
        try:
            stored = json.loads((Path(w) / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise WorkdirError(f"{w} is not a work directory of the main job ({e})") from e
        mine = {**cfg.flat(), **dataset.identity, "preset": None, "seed": None}
        diff = config_diff({**stored, "preset": None, "seed": None}, mine)
        if diff:
            raise ConfigError(f"{w} was trained with another config than this one (beyond its seed): {diff}")
        name = f"seed {stored['seed']}"
        models[name if name not in models else str(w)] = m  # two runs of one seed: told apart by their folders
    prepared = dataset.prepare_run(cfg)
    seed = rng.eval_seeds(cfg.eval.eval_seed)["validation_candidates"]
    if len(members) > 1:
        models[f"ensemble of {len(members)}"] = api.ensemble(members)
    validation, candidates = {}, {}
    for name, model in models.items():
        for n in tta:
            key = name if n == 1 else f"{name}, tta {n}"
            t0 = time.perf_counter()
            r = evaluators.OneShot(prepared.validation_tasks, seed=seed).run(evaluators.with_tta(model, n))
            passes = n * _members(model)
            validation[key] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "trials": r["trials"],
                               "tower_passes": passes, "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
            candidates[key] = (model, n)
            print(f"validation one-shot: {key:28s} {r['accuracy']:.2%} ({passes} tower passes per image)", flush=True)
    chosen = max(validation, key=lambda k: (validation[k]["accuracy"], -validation[k]["tower_passes"]))
    results = {"validation": validation, "chosen": chosen, "members": [str(w) for w in workdirs]}
    if test:
        model, n = candidates[chosen]
        tests = test_sets(cfg, prepared, "The same command")
        scored, _ = evaluate(evaluators.with_tta(model, n), tests, progress=progress)
        results["test"] = scored
    results.update(provenance.provenance(cfg))
    provenance.write_json(out / "ensemble.json", results)
    return results
