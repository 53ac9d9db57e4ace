"""The table of a run's results: every test set's figures, the model beside raw pixels and the paper.

One table for every dataset (the main job, the MNIST transfer, ``siamax train`` / ``evaluate`` on a
folder), read from the one ``results.json`` schema (docs/architecture.md): a one-shot section
``{"accuracy", "ci95", "trials"}``, ``verification`` and ``retrieval``; the raw-pixel baseline's results
under ``pixels``; the published numbers under ``paper`` where the dataset has them.
"""

from __future__ import annotations

import statistics

# Row labels of the known one-shot test sets (others are named from their keys: random_5way_1shot ->
# "random 5-way 1-shot"), in the order the table shows them.
LABELS = {
    "lake20": "Lake's 20 runs, 20-way within-alphabet",
    "within_alphabet": "400 within-alphabet trials, test alphabets",
    "random_20way_1shot": "random 20-way 1-shot episodes, test classes",
    "random_5way_1shot": "random 5-way 1-shot episodes, test classes",
    "random_20way_5shot": "random 20-way 5-shot episodes, test classes",
    "mnist10": "MNIST 10-way one-shot",
}
# Where the paper's number of the raw-pixel baseline is kept for a test set.
PAPER_PIXELS = {"lake20": "one_nn", "mnist10": "mnist10_one_nn"}


def paper_verification_key(cfg: dict | None) -> str | None:
    """The paper's verification row a run's config (``results["config"]``) matches (e.g. "150k_x9")."""
    if not cfg or cfg["objective"]["kind"] != "pairs" or cfg["data"]["n_pairs"] not in (30_000, 90_000, 150_000):
        return None
    return f"{cfg['data']['n_pairs'] // 1000}k" + ("_x9" if cfg["data"]["distortions"] == 8 else "")


def _is_oneshot(r) -> bool:
    return isinstance(r, dict) and {"accuracy", "ci95", "trials"} <= set(r) and "roc_auc" not in r


def _label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    if name.startswith("random_") and "way_" in name:
        n, k = name[len("random_") :].split("way_")
        return f"random {n}-way {k.removesuffix('shot')}-shot episodes, test classes"
    return name.replace("_", " ")


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _ci(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['accuracy'])}  [{100 * lo:4.1f}, {100 * hi:4.1f}]  n={r['trials']}"


def table(results: dict, names=None) -> str:
    """The results as text: one row per measure, columns siamax (95% CI), raw pixels, paper.

    ``names``: the test sets to show (default: the run's ``test_sets``, else every one-shot section; the
    copies kept under older keys, such as ``one_nn``, are not test sets)."""
    pixels, paper = results.get("pixels", {}), results.get("paper") or {}
    names = names if names is not None else results.get("test_sets")
    verification_key = paper_verification_key(results.get("config"))
    rows = []
    shown = [n for n in results if _is_oneshot(results[n]) and (names is None or n in names)]
    names = [n for n in LABELS if n in shown] + sorted(n for n in shown if n not in LABELS)
    for name in names:
        p = paper.get(name)
        p_text = f"{p:.1f}%" if isinstance(p, (int, float)) else "-"
        if PAPER_PIXELS.get(name) in paper:
            p_text += f" / {paper[PAPER_PIXELS[name]]:.1f}%"
        px = pixels.get(name)
        rows.append((_label(name), _ci(results[name]), _pct(px["accuracy"]) if px else "-", p_text))
    v, pv = results.get("verification"), pixels.get("verification")
    if v:
        pv_ = pv or {}
        vp = paper.get("verification", {})
        key = verification_key if verification_key in vp else "150k_x9"
        rows.append(
            (
                f"verification accuracy (threshold {v['threshold']:.3f})",
                _ci(v) if "ci95" in v else _pct(v["accuracy"]),
                _pct(pv_["accuracy"]) if "accuracy" in pv_ else "-",
                f"{vp[key]:.2f}% ({key})" if key in vp else "-",
            )
        )
        for key_, label in (("roc_auc", "verification ROC AUC"), ("eer", "verification EER")):
            rows.append((label, _pct(v[key_]), _pct(pv_[key_]) if key_ in pv_ else "-", "-"))
    r, pr = results.get("retrieval"), pixels.get("retrieval") or {}
    if r:
        k = next((key for key in r if key.startswith("recall_at_")), None)
        for key_, label in (("precision_at_1", "retrieval precision@1"), (k, f"retrieval recall@{k[10:]}" if k else ""),
                            ("map_at_r", "retrieval MAP@R")):  # fmt: skip
            if key_:
                rows.append((label, _pct(r[key_]), _pct(pr[key_]) if key_ in pr else "-", "-"))
    lines = [f"{'':46s} {'siamax  (95% CI)':32s} {'raw pixels':>10s} {'paper':>16s}", "-" * 108]
    lines += [f"{a:46s} {b:32s} {c:>10s} {d:>16s}" for a, b, c, d in rows]
    if not rows:
        lines.append("(no test sets were scored)")
    d = results.get("data")
    if d:
        lines.insert(0, f"{d.get('name')}: {d.get('images')} images, {d.get('classes')} classes")
    t = results.get("training")
    if t:
        lines.append(
            f"trained {t['epochs']} epochs ({t['train_seconds']:.0f}s, best epoch {t['best_epoch']}, "
            f"{t['pairs_per_s']:,.0f} pairs/s, {t['images_per_s']:,.0f} images/s, "
            f"objective {t['objective']}) on {results.get('device')}; wall time {results.get('wall_seconds', 0):.0f}s"
        )
    return "\n".join(lines)


# ---- Over runs: the experiments' summaries of several seeds or folds -------------------------------


def stats(values: list[float]) -> dict:
    """Mean, standard deviation (``n - 1``; 0 for one value) and the values themselves."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}  # fmt: skip


def compare(runs: list[dict | None], rows, embedders) -> dict:
    """``"{section}/{measure}" -> {embedder: stats}`` over ``runs`` for each ``(section, measure, label)``
    of ``rows``: siamax's own figure (``"siamax"``) or a baseline's (``results[embedder][section]``). A
    row or embedder missing from any run is left out (never a mean of some runs)."""
    out: dict = {}
    for section, measure, _ in rows:
        for e in embedders:
            values = [None if r is None else (r if e == "siamax" else r.get(e, {})).get(section, {}).get(measure)
                      for r in runs]  # fmt: skip
            if values and all(v is not None for v in values):
                out.setdefault(f"{section}/{measure}", {})[e] = stats(values)
    return out


def compare_lines(summary: dict, rows, embedders, title: str) -> list[str]:
    """Markdown rows of :func:`compare`'s ``summary``: a row per measure, mean ± std per embedder."""
    lines = [f"| {title} | " + " | ".join(embedders) + " |", "|---" * (len(embedders) + 1) + "|"]
    for section, measure, label in rows:
        row = summary.get(f"{section}/{measure}")
        if row:
            cells = [f"{row[e]['mean']:.2%} ± {row[e]['std']:.2%}" if e in row else "" for e in embedders]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines
