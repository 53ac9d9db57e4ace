"""The report: test-set evaluation of the chosen checkpoint, ``results.json``, a table, plots.

Everything here runs once, after model selection: Lake's runs and the test alphabets are never
used to choose anything.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from siamax import conv, evaluate, metrics, rng
from siamax import data as sd
from siamax.data import omniglot as og

# Koch et al. (2015), tables 2-4 (see ../shared/koch2015.md).
PAPER = {
    "lake20": 92.0,
    "within_alphabet": 92.0,
    "one_nn": 21.7,
    "mnist10": 70.3,
    "mnist10_one_nn": 26.5,
    "verification": {"30k": 90.61, "90k": 91.54, "150k": 91.63, "30k_x9": 91.90, "90k_x9": 93.15, "150k_x9": 93.42},
}


def environment() -> dict:
    """The machine and the library versions."""
    import flax
    import optax
    import orbax.checkpoint

    dev = jax.devices()
    return {
        "device": f"{len(dev)} x {dev[0].device_kind}",
        "backend": jax.default_backend(),
        "processes": jax.process_count(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "python": sys.version.split()[0],
        "versions": {
            "siamax": siamax_version(),
            "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax-checkpoint": orbax.checkpoint.__version__,
            "numpy": np.__version__,
        },
    }


def siamax_version() -> str:
    import siamax

    return siamax.__version__


def git_state() -> dict:
    """``{"git_commit", "git_dirty"}`` of the checkout siamax runs from (``"unknown"`` / None outside one)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    if top.returncode or head.returncode or Path(top.stdout.strip()).resolve() != root:
        return {"git_commit": "unknown", "git_dirty": None}  # an installed copy, not a checkout
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def provenance(cfg=None) -> dict:
    """What makes a result rerunnable: code (commit, dirty flag, versions), machine, seeds, and the
    convolution implementation each layer ran."""
    out = {**git_state(), **environment(), "date": time.strftime("%Y-%m-%d"), "time_utc": _utc_now()}
    if cfg is not None:
        out["seeds"] = rng.record(cfg.seed, cfg.eval.eval_seed)
        out["conv_plan"] = conv.plan_dict(cfg.spec)
    return out


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def paper_verification_key(cfg) -> str | None:
    """The paper's verification row this config matches (e.g. "150k_x9"), if any."""
    if cfg.objective.kind != "pairs" or cfg.data.n_pairs not in (30_000, 90_000, 150_000):
        return None
    return f"{cfg.data.n_pairs // 1000}k" + ("_x9" if cfg.data.distortions == 8 else "")


def test_sets(cfg, omniglot, splits) -> dict:
    """Every trial and pair the report scores, drawn from ``cfg.eval.eval_seed`` alone.

    ``{"lake20": tasks, "within_alphabet": {N: tasks}, "verification_validation": pairs,
    "verification_test": pairs, "validation_table", "test_table", "candidates_seed": int, "report_seed":
    int}`` from the Omniglot table. Runs with different training seeds get identical sets, so their
    numbers differ only by what they learned.
    """
    seeds = rng.eval_seeds(cfg.eval.eval_seed)
    test = splits.test
    n_pairs = cfg.eval.verification_pairs
    val_table = omniglot.take(splits.validation.flat_indices(), name="omniglot/validation")
    test_table = omniglot.take(splits.test.flat_indices(), name="omniglot/test")
    all_drawers = omniglot.of_classes(splits.test.chars, name="omniglot/test, all 20 drawers")
    return {
        "lake20": sd.lake_runs(),
        "within_alphabet": {
            n: sd.within_alphabet_tasks(
                omniglot, test.alphabets, test.drawers, per_alphabet=2, n_way=n, seed=seeds["test_tasks"]
            )
            for n in range(2, 21)
        },
        # The threshold is chosen on validation pairs (model selection), accuracy measured on test pairs.
        "verification_validation": sd.make_pairs(val_table, n_pairs, seed=seeds["verification_validation"]),
        "verification_test": sd.make_pairs(test_table, n_pairs, seed=seeds["verification_test"]),
        # Vinyals-style: classes drawn across the 10 test alphabets, from all 20 drawers of their characters
        # (the test alphabets never enter training, so their other drawers are test data too); 400 trials each.
        **{
            f"random_{n}way_{k}shot": sd.episodes(
                all_drawers, n_way=n, k_shot=k, n_query=1, n_episodes=400 // n, seed=[seeds["random_tasks"], n, k]
            )
            for n, k in ((20, 1), (5, 1), (20, 5))
        },
        "validation_table": val_table,
        "test_table": test_table,
        "candidates_seed": seeds["test_candidates"],
        "report_seed": seeds["report"],
    }


_DRAWERS = re.compile(r"drawers(\d+)->(\d+)")


# ---- the gap between Lake's runs and siamax's within-alphabet trials (after the fact; never for choosing)


def drawer_groups(per_task: dict, lake_drawers, split_drawers) -> dict:
    """Per-task results of within-alphabet tasks (named ``...drawersA->B``) pooled by support drawer,
    by query drawer, and for the tasks whose two drawers both lie in ``lake_drawers`` / ``split_drawers``."""
    groups: dict[str, dict[str, list]] = {"support": {}, "query": {}, "both": {}}
    for name, r in per_task.items():
        a, b = (int(d) for d in _DRAWERS.search(name).groups())
        both = [k for k, ds in (("Lake's drawers", lake_drawers), ("the split's test drawers", split_drawers))
                if a in ds and b in ds]  # fmt: skip
        for kind, key in (("support", a), ("query", b), *(("both", k) for k in both)):
            groups[kind].setdefault(str(key), []).append(r)
    return {
        kind: {
            key: {
                "accuracy": sum(r["accuracy"] * r["trials"] for r in rs) / sum(r["trials"] for r in rs),
                "trials": sum(r["trials"] for r in rs),
            }
            for key, rs in sorted(by.items(), key=lambda kv: (len(kv[0]), kv[0]))
        }
        for kind, by in groups.items()
    }


def lake_variants(omniglot: sd.Omniglot, table, *, draws: int = 10, seed: int = 0) -> dict[str, list]:
    """Lake's 20 runs rebuilt from ``table`` (each of their images found by its pixels in Omniglot),
    and ``draws`` variants of each run with its 20 characters, its two drawers, or both replaced by
    random ones of the same alphabet: what makes the runs easier or harder than random tasks."""
    flat = omniglot.flat_images
    evaluation = np.flatnonzero(np.repeat(omniglot.char_set, og.N_DRAWERS) == 1)
    where = {flat[i].tobytes(): i for i in evaluation}
    images = np.asarray(table.images)
    rng = np.random.default_rng(seed)

    def task(run, chars, a, b):
        q = rng.permutation(len(chars))
        support, query = images[chars * og.N_DRAWERS + a], images[chars[q] * og.N_DRAWERS + b]
        return sd.Task(support=support, query=query, answers=q, ink="light", alphabet=run.alphabet, name=run.name)

    out = {k: [] for k in ("Lake's", "random characters", "random drawers", "random characters and drawers")}
    for run in sd.lake_runs():
        try:
            support = np.array([where[x.tobytes()] for x in run.support])
            a, b = support[0] % og.N_DRAWERS, where[run.query[0].tobytes()] % og.N_DRAWERS
        except KeyError:
            raise ValueError(f"{run.name}: an image not found in Omniglot's evaluation set") from None
        chars, alphabet = support // og.N_DRAWERS, sd.alphabet_char_ids(run.alphabet) - 1
        query = np.array([where[x.tobytes()] for x in run.query])
        out["Lake's"].append(dataclasses.replace(run, support=images[support], query=images[query], ink="light"))
        for _ in range(draws):
            other = rng.choice(alphabet, len(chars), replace=False)
            ra, rb = rng.choice(og.N_DRAWERS, 2, replace=False)
            out["random characters"].append(task(run, other, a, b))
            out["random drawers"].append(task(run, chars, ra, rb))
            out["random characters and drawers"].append(task(run, other, ra, rb))
    return out


def _overall(result: dict) -> dict:
    """A one-shot result without its groupings."""
    return {k: v for k, v in result.items() if k != "by"}


def _alphabet(task) -> str:
    return task.alphabet


def _name(task) -> str:
    return task.name


def _lake_task(task) -> str:
    """ "run07: Gurmukhi, drawers 5->2" (support drawer -> query drawer, from the data README)."""
    alphabet, a, b = sd.LAKE_RUNS[int(task.name[3:]) - 1]
    return f"{task.name}: {alphabet}, drawers {a}->{b}"


def evaluate_and_report(
    params,
    cfg,
    *,
    preset,
    workdir: Path,
    omniglot,
    splits,
    summary,
    sampler,
    plots=True,
    wall_seconds_so_far: float = 0.0,
) -> dict:
    """Score the chosen model on the test sets (once), write ``results.json`` and the plots, print the table.

    Every trial and pair comes from ``cfg.eval.eval_seed`` alone (``siamax.rng.eval_seeds``), so
    runs with different training seeds are scored on identical trials.
    """
    t0 = time.perf_counter()
    sets = test_sets(cfg, omniglot, splits)
    shuffle = sets["candidates_seed"]
    lake, within = sets["lake20"], sets["within_alphabet"][20]
    val_pairs, test_pairs = sets["verification_validation"], sets["verification_test"]
    val_images, test_images = (np.asarray(sets[f"{s}_table"].images) for s in ("validation", "test"))
    val_p = evaluate.pair_probabilities(params, val_images, val_pairs.i1, val_pairs.i2, ink="light")
    test_p = evaluate.pair_probabilities(params, test_images, test_pairs.i1, test_pairs.i2, ink="light")
    # Lake's runs and the 20-way within-alphabet tasks are scored once each, grouped by alphabet and by task.
    lake_r = evaluate.one_shot_accuracy(params, lake, seed=shuffle, by={"alphabet": _alphabet, "task": _lake_task})
    within_r = evaluate.one_shot_accuracy(params, within, seed=shuffle, by={"alphabet": _alphabet, "task": _name})
    nway = {
        n: _overall(within_r) if n == 20 else evaluate.one_shot_accuracy(params, tasks, seed=shuffle)
        for n, tasks in sets["within_alphabet"].items()
    }
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_seconds = summary["train_seconds"]
    steps = summary["epoch"] * sampler.steps_per_epoch
    results = {
        "preset": preset,
        "seed": cfg.seed,
        "eval_seed": cfg.eval.eval_seed,
        "config": cfg.to_dict(),
        "lake20": {**_overall(lake_r), "by": lake_r["by"]["alphabet"]},
        "within_alphabet": {**_overall(within_r), "by": within_r["by"]["alphabet"]},
        **{
            name: evaluate.one_shot_accuracy(params, sets[name], seed=shuffle)
            for name in ("random_20way_1shot", "random_5way_1shot", "random_20way_5shot")
        },
        # The two 20-way within-alphabet protocols task by task: alphabet and which drawers are support / query.
        "by_task": {"lake20": lake_r["by"]["task"], "within_alphabet": within_r["by"]["task"]},
        "verification": {
            **evaluate.verification_accuracy(val_p, val_pairs.label, test_p, test_pairs.label),
            "roc_auc": metrics.roc_auc(test_p, test_pairs.label),
            "eer": metrics.eer(test_p, test_pairs.label)[0],
        },
        "one_nn": evaluate.nearest_neighbour(lake, "euclidean", seed=shuffle),
        "one_nn_cosine": evaluate.nearest_neighbour(lake, "cosine", seed=shuffle),
        "one_nn_within_alphabet": evaluate.nearest_neighbour(within, "euclidean", seed=shuffle),
        "nway_within_alphabet": {str(n): r for n, r in nway.items()},
        "training": {
            "epochs": summary["epoch"],
            "best_epoch": summary["best_epoch"] + 1,
            "best_val_accuracy": summary["best_accuracy"],
            "steps": steps,
            "train_seconds": train_seconds,
            "objective": cfg.objective.kind,
            "pairs_per_s": steps * sampler.pairs_per_step / max(train_seconds, 1e-9),
            "images_per_s": steps * sampler.images_per_step / max(train_seconds, 1e-9),
        },
        "paper": PAPER,
        **provenance(cfg),
    }
    results["wall_seconds"] = wall_seconds_so_far + time.perf_counter() - t0
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    if plots:
        save_plots(params, results, history, lake, workdir, seed=sets["report_seed"])
    results["wall_seconds"] = wall_seconds_so_far + time.perf_counter() - t0
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results, paper_verification_key(cfg)))
    print(f"results, plots and the exported model are in {workdir}")
    return results


def _fmt(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{100 * r['accuracy']:5.1f}%  [{100 * lo:4.1f}, {100 * hi:4.1f}]  n={r['trials']}"


def table(results: dict, verification_key: str | None = None) -> str:
    p = results["paper"]
    v_paper = (
        f"{p['verification'][verification_key]:.2f}% ({verification_key})"
        if verification_key
        else f"{p['verification']['150k_x9']:.2f}% (150k x9)"
    )
    rows = [
        ("Lake's 20 runs, 20-way within-alphabet", "lake20", f"{p['lake20']:.1f}%"),
        ("400 within-alphabet trials, test alphabets", "within_alphabet", f"{p['within_alphabet']:.1f}%"),
        ("random 20-way 1-shot, across test alphabets", "random_20way_1shot", "-"),
        ("random 5-way 1-shot, across test alphabets", "random_5way_1shot", "-"),
        ("random 20-way 5-shot, across test alphabets", "random_20way_5shot", "-"),
        ("verification, test pairs", "verification", v_paper),
        ("1-NN pixels (Euclidean), Lake's runs", "one_nn", f"{p['one_nn']:.1f}%"),
        ("1-NN pixels (cosine), Lake's runs", "one_nn_cosine", "-"),
        ("MNIST 10-way one-shot", "mnist10", f"{p['mnist10']:.1f}%"),
        ("MNIST 10-way, 1-NN pixels", "mnist10_one_nn", f"{p['mnist10_one_nn']:.1f}%"),
    ]
    lines = [f"{'':44s} {'siamax  (95% CI)':32s} {'paper':>10s}", "-" * 90]
    for label, key, paper in rows:
        if key in results:
            lines.append(f"{label:44s} {_fmt(results[key]):32s} {paper:>10s}")
    v = results.get("verification")
    if v and "roc_auc" in v:
        lines.append(
            f"{'verification ROC AUC / EER, test pairs':44s} {100 * v['roc_auc']:5.2f}% / {100 * v['eer']:.2f}%"
        )
    t = results.get("training")
    if t:
        lines.append(
            f"trained {t['epochs']} epochs ({t['train_seconds']:.0f}s, best epoch {t['best_epoch']}, "
            f"{t['pairs_per_s']:,.0f} pairs/s, {t['images_per_s']:,.0f} images/s, "
            f"objective {t['objective']}) on {results['device']}; wall time {results['wall_seconds']:.0f}s"
        )
    return "\n".join(lines)


def save_plots(params, results: dict, history: list[dict], lake, workdir: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Learning curves.
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] + 1 for h in history]
    ax[0].plot(ep, [h["loss"] for h in history], label="train loss")
    ax[0].plot(ep, [h["cross_entropy"] for h in history], label="cross-entropy", ls="--")
    ax[0].set(xlabel="epoch", ylabel="loss", title="training")
    ax[0].legend()
    ax[1].plot(ep, [100 * h["val_accuracy"] for h in history], marker="o", ms=3)
    ax[1].set(xlabel="epoch", ylabel="accuracy (%)", title="validation 20-way one-shot (validation alphabets)")
    fig.tight_layout()
    fig.savefig(workdir / "learning_curves.png", dpi=120)
    plt.close(fig)

    # Accuracy against N for N-way within-alphabet tasks.
    nway = results["nway_within_alphabet"]
    ns = sorted(int(n) for n in nway)
    acc = np.array([100 * nway[str(n)]["accuracy"] for n in ns])
    lo = np.array([100 * nway[str(n)]["ci95"][0] for n in ns])
    hi = np.array([100 * nway[str(n)]["ci95"][1] for n in ns])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(ns, lo, hi, alpha=0.25)
    ax.plot(ns, acc, marker="o", label="siamax")
    ax.plot(ns, [100 / n for n in ns], ls=":", color="gray", label="chance")
    ax.set(
        xlabel="N (ways)", ylabel="accuracy (%)", ylim=(0, 100), title="N-way within-alphabet one-shot, test alphabets"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "accuracy_vs_nway.png", dpi=120)
    plt.close(fig)

    # A grid of one-shot trials from Lake's runs: query, its 20 candidates, the choice.
    save_trial_grid(params, lake, workdir / "oneshot_trials.png", seed=seed)


def save_trial_grid(params, tasks, path: Path, n_rows: int = 6, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    picks = [(t, int(q)) for t, q in zip(rng.choice(len(tasks), n_rows), rng.integers(0, 20, n_rows))]
    fig, axes = plt.subplots(n_rows, 22, figsize=(22 * 0.8, n_rows * 0.9))
    for row, (ti, qi) in enumerate(picks):
        task = tasks[ti]
        scores = evaluate.pair_probabilities(
            params,
            np.concatenate([task.query[qi : qi + 1], task.support]),
            np.zeros(len(task.support), int),
            np.arange(1, len(task.support) + 1),
            ink=task.ink,
        )
        choice = int(np.argmax(scores))
        answer = int(task.answers[qi])
        cells = (
            [("query", task.query[qi], None)]
            + [("", None, None)]
            + [
                (f"{scores[j]:.2f}", task.support[j], "green" if j == answer else ("red" if j == choice else None))
                for j in range(len(task.support))
            ]
        )
        for col, (title, img, color) in enumerate(cells):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=6)
            if color:
                for s in ax.spines.values():
                    s.set_color(color)
                    s.set_linewidth(2.5)
    fig.suptitle(
        "Lake's runs: query (left) vs 20 candidates, with p(same). Green frame: right answer; "
        "red frame: the model's wrong choice",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_evaluation_plots(results: dict, plot: dict, table, index, out: Path, n_queries: int = 6, k: int = 5) -> None:
    """``siamax evaluate``'s figures in ``out``: ROC curves (model vs raw pixels), same/different score
    histograms, a retrieval grid (queries and their top-k, leave-one-out), a 2-D map of the embeddings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siamax import metrics

    labels = np.asarray(plot["labels"]) > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, scores in (("siamax", plot["scores"]), ("raw pixels", plot["pixel_scores"])):
        fpr, tpr, _ = metrics.roc_curve(scores, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc(scores, labels):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="gray")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title=f"verification, {table.name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    scores = np.asarray(plot["scores"])
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels], bins=bins, alpha=0.6, label="same class")
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label="different classes")
    ax.axvline(results["verification"]["threshold"], color="black", ls="--", label="threshold")
    ax.set(xlabel="p(same)", ylabel="pairs", title="scores of the verification pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_histograms.png", dpi=120)
    plt.close(fig)

    emb = np.asarray(plot["embeddings"])
    gen = np.random.default_rng(0)
    queries = gen.choice(table.n_images, min(n_queries, table.n_images), replace=False)
    scores, ids = index.search(emb[queries], min(k + 1, table.n_images))
    images = np.asarray(table.images)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=((k + 1) * 1.1, len(queries) * 1.2), squeeze=False)
    for row, (q, s_row, i_row) in enumerate(zip(queries, np.asarray(scores), np.asarray(ids))):
        hits = [(s, i) for s, i in zip(s_row, i_row) if i != q][:k]
        cells = [(images[q], "query", None)] + [
            (images[i], f"{s:.2f}", "green" if table.labels[i] == table.labels[q] else "red") for s, i in hits
        ]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(cells):
                ax.axis("off")
                continue
            img, title, color = cells[col]
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(title, fontsize=6)
            for spine in ax.spines.values():
                spine.set_color(color or "black")
                spine.set_linewidth(2 if color else 0.5)
    fig.suptitle(f"retrieval: query, then its top {k} (green: same class)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "retrieval_grid.png", dpi=120)
    plt.close(fig)

    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c=table.labels, cmap="tab20" if table.n_classes <= 20 else "nipy_spectral", s=6)
    ax.set(title=f"embeddings, first two principal components ({table.n_classes} classes)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out / "embedding_map.png", dpi=120)
    plt.close(fig)
