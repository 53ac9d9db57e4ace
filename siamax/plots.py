"""The figures of a run: learning curves, accuracy against N, one-shot trials, and for every evaluation
with verification and retrieval: ROC curves (model and raw pixels), score histograms, a retrieval grid
and a 2-D map of the embeddings. Written next to results.json; matplotlib (Agg) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamax import metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict], out: Path) -> None:
    """Training loss and validation one-shot accuracy per epoch (from ``metrics.jsonl``)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] + 1 for h in history]
    ax[0].plot(ep, [h["loss"] for h in history], label="train loss")
    ax[0].plot(ep, [h["cross_entropy"] for h in history], label="cross-entropy", ls="--")
    ax[0].set(xlabel="epoch", ylabel="loss", title="training")
    ax[0].legend()
    ax[1].plot(ep, [100 * h["val_accuracy"] for h in history], marker="o", ms=3)
    ax[1].set(xlabel="epoch", ylabel="accuracy (%)", title="validation one-shot (validation data only)")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=120)
    plt.close(fig)


def accuracy_vs_nway(nway: dict, out: Path) -> None:
    """Accuracy against N for the N-way within-alphabet tasks (``results["nway_within_alphabet"]``)."""
    plt = _plt()
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
    fig.savefig(out / "accuracy_vs_nway.png", dpi=120)
    plt.close(fig)


def trial_grid(embedder, tasks, path: Path, n_rows: int = 6, seed: int = 0) -> None:
    """Query, its 20 candidates with p(same), the right answer and the model's wrong choice framed."""
    plt = _plt()
    rng = np.random.default_rng(seed)
    picks = [(t, int(q)) for t, q in zip(rng.choice(len(tasks), n_rows), rng.integers(0, 20, n_rows))]
    fig, axes = plt.subplots(n_rows, 22, figsize=(22 * 0.8, n_rows * 0.9))
    for row, (ti, qi) in enumerate(picks):
        task = tasks[ti]
        emb = embedder.embed(np.concatenate([task.query[qi : qi + 1], task.support]), task.ink)
        n = len(task.support)
        scores = embedder.pair_scores(emb, np.zeros(n, int), np.arange(1, n + 1))
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


def verification(scores: dict, labels, threshold: float, name: str, out: Path) -> None:
    """ROC curves of every embedder on the same pairs (``scores``: {name: scores}) and the model's
    same/different score histograms with its threshold."""
    plt = _plt()
    labels = np.asarray(labels) > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for who, s in scores.items():
        fpr, tpr, _ = metrics.roc_curve(s, labels)
        ax.plot(fpr, tpr, label=f"{who} (AUC {metrics.roc_auc(s, labels):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="gray")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title=f"verification, {name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    model = np.asarray(scores["siamax"])
    bins = np.linspace(0, 1, 41)
    ax.hist(model[labels], bins=bins, alpha=0.6, label="same class")
    ax.hist(model[~labels], bins=bins, alpha=0.6, label="different classes")
    ax.axvline(threshold, color="black", ls="--", label="threshold")
    ax.set(xlabel="p(same)", ylabel="pairs", title="scores of the verification pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_histograms.png", dpi=120)
    plt.close(fig)


def retrieval(model, embeddings, images, labels, out: Path, n_queries: int = 6, k: int = 5) -> None:
    """A retrieval grid (queries and their top-k by the model's own score, ``metrics.knn``, with
    p(same)) and a 2-D map of the embeddings (first two principal components) of the model-format
    ``images`` of classes ``labels``. ``model``: the embedder that made ``embeddings``
    (``siamax.evaluators``: its energy, head and dtype rank them)."""
    plt = _plt()
    emb = np.asarray(embeddings)
    labels = np.asarray(labels)  # the images are indexed a row at a time: a packed table's are read so
    n, n_classes = len(labels), len(np.unique(labels))
    gen = np.random.default_rng(0)
    queries = gen.choice(n, min(n_queries, n), replace=False)
    k = min(k, n - 1)
    ids, logits = metrics.knn(emb[queries], emb, k + 1, energy=model.energy, head=model.head, dtype=model.dtype)
    scores = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    fig, axes = plt.subplots(len(queries), k + 1, figsize=((k + 1) * 1.1, len(queries) * 1.2), squeeze=False)
    for row, (q, s_row, i_row) in enumerate(zip(queries, np.asarray(scores), np.asarray(ids))):
        hits = [(s, i) for s, i in zip(s_row, i_row) if i != q][:k]
        cells = [(images[q], "query", None)] + [
            (images[i], f"{s:.2f}", "green" if labels[i] == labels[q] else "red") for s, i in hits
        ]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(cells):
                ax.axis("off")
                continue
            img, title, color = cells[col]
            ax.imshow(np.asarray(img), cmap="gray_r", vmin=0, vmax=255)
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
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20" if n_classes <= 20 else "nipy_spectral", s=6)
    ax.set(title=f"embeddings, first two principal components ({n_classes} classes)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out / "embedding_map.png", dpi=120)
    plt.close(fig)
