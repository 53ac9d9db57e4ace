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
  the nearest classes of a gallery, the same with the gallery's embeddings computed once and stored;
* :func:`pack_folder`: a folder written once as a packed dataset (``siamax.data.packed``), which
  ``train_folder`` then reads from disk as it trains, for folders larger than memory.

Every image reaches the tower by the one route (``adapters.read_folder`` / ``read_files``: images
through ``image_folder`` / ``image_files`` -> ``model_format``, sound clips through ``audio_folder`` /
``audio_files`` as log-mel images), with what the model was trained with: its modality (ink drawings,
photos or audio: files of another kind are refused), ink polarity, channels (gray or RGB) and audio
front-end (``siamax.audio.MelConfig``), all stored in ``model.msgpack``'s metadata.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siamax import api, checkpoint, config, evaluators, experiment, presets, sharding
from siamax.audio import MelConfig
from siamax.data import adapters, packed
from siamax.errors import InputError, ModelError
from siamax.index import INDEX_NAME, Index

MODEL_NAME = checkpoint.EXPORT_NAME


@dataclasses.dataclass(frozen=True)
class Model:
    """An exported model and what was chosen with it: the same/different threshold, the ink polarity, the
    modality of its training data and, for audio, the front-end that made its log-mel images."""

    params: api.Params | api.Ensemble
    threshold: float  # p >= threshold means "same"
    threshold_from: str  # "validation" (chosen on validation classes) or "default" (0.5: none was stored)
    ink: str  # the polarity its training images had: "dark", "light" (or "auto": unknown, tell from the images)
    path: Path
    modality: str = "ink"  # adapters.MODALITIES: "ink" drawings (also every model from before), "photos", "audio"
    mel: MelConfig | None = None  # the audio front-end (audio models only)

    @property
    def spec(self):
        """What its input is made by: the spec (of an ensemble, the input its members share)."""
        return self.params.input_spec if isinstance(self.params, api.Ensemble) else self.params.spec


def load_model(path: str | Path) -> Model:
    """A work directory or a ``model.msgpack`` (errors: DataError if missing, ModelError if not a model)."""
    params = checkpoint.load(path)
    meta = checkpoint.read_metadata(path)
    threshold = meta.get("threshold")
    ink = meta.get("ink", "auto")
    if ink not in ("dark", "light", "auto"):
        raise ModelError(f"{path}: the model's stored ink {ink!r} is not 'dark' or 'light'")
    modality = meta.get("modality", "ink")
    if modality not in adapters.MODALITIES:
        raise ModelError(f"{path}: the model's stored modality {modality!r} is not one of {adapters.MODALITIES}")
    mel = None
    if modality == "audio":
        try:  # stored by siamax train; none: the front-end audio_folder uses by default, square at the input size
            mel = MelConfig(**meta["mel"]) if meta.get("mel") else MelConfig.square(params.spec.input_size)
        except (TypeError, ValueError) as e:
            raise ModelError(
                f"{path}: the model's stored audio front-end {meta.get('mel')!r} is not usable: {e}"
            ) from e
    return Model(
        params=params,
        threshold=0.5 if threshold is None else float(threshold),
        threshold_from="default" if threshold is None else "validation",
        ink=ink,
        path=Path(path),
        modality=modality,
        mel=mel,
    )


PACK_NAME = "packed"  # where a folder too large for memory is packed, inside a run's or an index's folder


def _embed_table(params: api.Params, table, *, progress: bool | None = None) -> np.ndarray:
    """The embeddings of a table's images, read and embedded ``evaluators.embedders.EMBED_BLOCK`` at a time (a packed
    gallery may not fit in memory; its embeddings do), with a progress bar over many blocks. In a
    multi-process run (``jax.distributed``) each process embeds its own contiguous share of the rows
    and every process gets all the embeddings, in row order."""
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    process, processes = sharding.shard_of_process()
    share = -(-table.n_images // processes)
    mine = table.images[process * share : (process + 1) * share]
    embedder = evaluators.ModelEmbedder(params)
    total = -(-len(mine) // evaluators.embedders.EMBED_BLOCK)
    blocks = evaluators.embed_blocks(embedder, mine, "light")
    bar = tqdm(blocks, total=total, desc="embedding", unit="block", disable=progress is False or total < 4)
    emb = (
        np.concatenate([np.asarray(e) for e in bar]) if total else np.zeros((0, params.spec.embedding_dim), np.float32)
    )
    if processes == 1:
        return emb
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    padded = np.zeros((share, emb.shape[1]), emb.dtype)  # equal shapes for the all-gather
    padded[: len(emb)] = emb
    return np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, emb.shape[1])[: table.n_images]


def load_models(paths) -> Model:
    """One model (:func:`load_model`), or several as one ``siamax.ensemble``: the mean of their
    probabilities, at the mean of their stored thresholds. They must have been trained on the same kind
    of data (modality, ink, audio front-end) and take the same input."""
    models = [load_model(p) for p in paths]
    if len(models) == 1:
        return models[0]
    first = models[0]
    for m in models[1:]:
        for what in ("modality", "ink", "mel"):
            if getattr(m, what) != getattr(first, what):
                raise InputError(
                    f"{m.path} and {first.path} were trained on different data ({what}: {getattr(m, what)!r} vs "
                    f"{getattr(first, what)!r}); an ensemble's members read their files alike"
                )
    return dataclasses.replace(
        first,
        params=api.ensemble([m.params for m in models]),
        threshold=float(np.mean([m.threshold for m in models])),
        threshold_from="mean of the members' (" + ", ".join(m.threshold_from for m in models) + ")",
        path=Path(" + ".join(str(m.path) for m in models)),
    )


def _read_folder(model: Model, data, *, ink: str = "auto", min_images: int = 2, progress=None):
    """``(table, report)`` of a folder, read as ``model`` was trained (adapters.read_folder)."""
    table, report, _ = adapters.read_folder(
        data,
        model.spec,
        modality=model.modality,
        ink=ink,
        mel=model.mel,
        min_images=min_images,
        progress=progress,
        fallback=model.ink,
    )
    return table, report


def _read_files(model: Model, paths):
    return adapters.read_files(list(paths), model.spec, modality=model.modality, fallback=model.ink, mel=model.mel)


def folder_kind(data, *, color: str = "auto", layout: str = "auto") -> adapters.FolderKind:
    """What a training folder holds (ink drawings, photos, audio clips; gray or colour): ``adapters.folder_kind``."""
    return adapters.folder_kind(data, color=color, layout=layout)


def _refuse_color_for_audio(color: str) -> None:
    if color != "auto":
        raise InputError(f"--color {color} is for images, and the folder holds audio clips: drop --color")


def folder_config(cfg: config.Config, kind: adapters.FolderKind, *, color: str = "auto", channels_given: bool = False):
    """``cfg`` with the channels of the folder's images (``kind.color``) unless ``--channels`` was given;
    ``--color`` / ``--channels`` that contradict the folder or each other are refused."""
    if kind.modality == "audio":
        _refuse_color_for_audio(color)
        if cfg.model.channels != 1:
            raise InputError(
                f"--channels {cfg.model.channels}: log-mel images of audio clips have 1 channel; drop --channels"
            )
        return cfg
    want = 3 if kind.color == "rgb" else 1
    if not channels_given:
        return cfg.override(channels=want)
    if color != "auto" and want != cfg.model.channels:
        raise InputError(
            f"--color {color} asks for {want} channel(s), --channels {cfg.model.channels}: give one of the two"
        )
    return cfg


# ---------------------------------------------------------------------------------------------
# train and evaluate: the one pipeline (siamax.experiment)


def pack_folder(
    data: str | Path,
    out: str | Path,
    *,
    image_size: int | None = None,
    preset: str | None = None,
    ink: str = "auto",
    color: str = "auto",
    layout: str = "auto",
    shard_size: int = packed.SHARD_SIZE,
    progress: bool = True,
    kind: adapters.FolderKind | None = None,
) -> packed.PackReport:
    """Write the folder ``data`` as the packed dataset ``out`` (``siamax.data.packed.pack``; resumable) for
    the input size ``image_size``, by default that of ``preset`` (by default the preset ``siamax train``
    chooses for what the folder holds), so that ``siamax train OUT`` with the same flags reads it.
    ``kind``: :func:`folder_kind` of ``data`` (None: told here)."""
    if packed.is_packed(data):
        raise InputError(f"{data} is already a packed dataset: give the folder it was packed from")
    kind = kind or folder_kind(data, color=color, layout=layout)
    if image_size is None:
        name = preset or presets.default_preset(presets.folder_task(kind.modality))
        image_size = presets.config(name).spec.input_size
    if kind.modality == "audio":
        _refuse_color_for_audio(color)
    return packed.pack(
        data,
        out,
        size=image_size,
        modality=kind.modality,
        ink=adapters._photo_ink(kind.modality, ink, None),  # pylint: disable=protected-access
        color=kind.color if kind.modality != "audio" else "auto",
        layout=layout,
        shard_size=shard_size,
        progress=progress,
    )


def _packed_if_too_large(data, where: Path, spec, modality: str, *, layout: str, doing: str, pack):
    """``data`` itself, or, where its images in model format would pass ``packed.MEMORY_BUDGET``, the
    pack of it in ``where`` (``pack(where)``: written once, resumed by a rerun), said in one line."""
    if packed.is_packed(data):
        return data
    n, need = packed.folder_bytes(data, spec, modality=modality, layout=layout)
    if need <= packed.MEMORY_BUDGET:
        return data
    if sharding.is_primary():  # one writer; in a multi-process run the others wait for the pack
        print(
            f"{data}: {n:,} files would take {packed.size_text(need)} in memory (more than "
            f"{packed.size_text(packed.MEMORY_BUDGET)}): packing them once into {where} and {doing} from disk "
            "(siamax pack does this ahead of time)"
        )
        print(pack(where).summary())
    sharding.sync(f"packed {where}")
    return where


def _model_data(model: Model, data, where: Path, *, ink: str, progress: bool, doing: str):
    """:func:`_packed_if_too_large` for a stored model: packed as the model reads its files (a folder of
    the other kind refused first, with read_folder's message)."""
    if not packed.is_packed(data) and Path(data).is_dir():
        adapters._refuse_modality(data, adapters.is_audio_folder(data), model.modality)  # pylint: disable=protected-access
    return _packed_if_too_large(
        data,
        where,
        model.spec,
        model.modality,
        layout="auto",
        doing=doing,
        pack=lambda w: packed.pack(
            data,
            w,
            size=model.spec,
            modality=model.modality,
            ink=adapters._photo_ink(model.modality, ink, None),  # pylint: disable=protected-access
            color="auto" if model.modality == "audio" else ("rgb" if model.spec.channels == 3 else "gray"),
            mel=model.mel,
            progress=progress,
        ),
    )


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
    color: str = "auto",
    kind: adapters.FolderKind | None = None,
) -> dict:
    """Train on a folder's classes in ``workdir`` (resumable: the same command carries on), export the
    model with its validation threshold, ink, modality (and audio front-end), and score the held-out
    test classes next to raw pixels. ``cfg`` must already have the folder's channels (:func:`folder_config`);
    ``kind``: :func:`folder_kind` of ``data`` (None: told here)."""
    kind = kind or folder_kind(data, color=color, layout=layout)
    mel = MelConfig.square(cfg.spec.input_size) if kind.modality == "audio" else None
    data = _packed_if_too_large(
        data,
        Path(workdir) / PACK_NAME,
        cfg.spec,
        kind.modality,
        layout=layout,
        doing="training",
        pack=lambda w: pack_folder(
            data, w, image_size=cfg.spec.input_size, ink=ink, color=color, layout=layout, progress=progress, kind=kind
        ),  # fmt: skip
    )
    dataset = adapters.ImageFolder(
        data,
        fractions=tuple(fractions),
        ink=ink,
        layout=layout,
        progress=progress,
        modality=kind.modality,
        color=color,
        mel=mel,
    )
    results = experiment.train_and_evaluate(
        cfg,
        workdir,
        dataset,
        preset=preset,
        progress=progress,
        max_seconds=None if max_minutes is None else 60 * max_minutes,
    )
    return results


def evaluate_folder(
    model: Model,
    data: str | Path,
    out: str | Path,
    *,
    n_way: int = 5,
    shots: int = 1,
    trials: int = 400,
    pairs: int = 10_000,
    eval_seed: int = 0,
    ink: str = "auto",
    plots: bool = True,
    progress: bool = True,
    json_path: str | Path | None = None,
    tta: int = 1,
) -> dict:
    """Score ``model`` (one, or an ensemble: :func:`load_models`; ``tta``: ``evaluators.with_tta``) on a
    folder whose classes it has never seen, next to raw pixels (Euclidean) on
    exactly the same pairs, trials and queries (``adapters.folder_tests``; all draws from ``eval_seed``
    alone): verification at the model's stored threshold (pixels, which have none, at the EER threshold
    of these very pairs: an optimistic figure, flagged), ``n_way``-way ``shots``-shot one-shot episodes,
    retrieval. Writes ``out/evaluation.json`` (the one results schema) and the plots."""
    if tta > 1 and model.modality == "audio":
        raise InputError("--tta distorts images (rotation, shear, scale, shift); a log-mel image of a clip is not one")
    data = _model_data(model, data, Path(out) / PACK_NAME, ink=ink, progress=progress, doing="evaluating")
    table, folder = _read_folder(model, data, ink=ink, progress=progress)
    print(folder.summary())
    tests = adapters.folder_tests(
        table,
        eval_seed=eval_seed,
        n_way=n_way,
        shots=shots,
        trials=trials,
        pairs=pairs,
        threshold=model.threshold,
        threshold_from=model.threshold_from,
    )
    info = {"name": table.name, "images": table.n_images, "classes": table.n_classes, "groups": table.n_groups,
            "folder": dataclasses.asdict(folder)}  # fmt: skip
    extra = {"model": str(model.path), "eval_seed": eval_seed}
    return experiment.evaluate_model(
        model.params,
        tests,
        out,
        name="evaluation.json",
        merge=False,
        info=info,
        plots_=plots,
        progress=progress,
        extra=extra,
        json_path=json_path,
        tta=tta,
    )


# ---------------------------------------------------------------------------------------------
# verify, identify, index


def verify(model: Model, image_a: str | Path, image_b: str | Path) -> dict:
    """``{"probability", "same", "threshold"}`` for two image files."""
    x = _read_files(model, [image_a, image_b])
    p = float(api.score(model.params, x[:1], x[1:])[0])
    return {"probability": p, "same": p >= model.threshold, "threshold": model.threshold}


def gallery_index(
    model: Model,
    gallery: str | Path,
    *,
    ink: str = "auto",
    progress: bool | None = None,
    backend: str = "jax",
    pack_into: Path | None = None,
) -> Index:
    """The index of a class-folder gallery (one image per class is enough), or of a packed one, in
    ``backend`` (``siamax.index``). ``pack_into``: where a folder too large for memory is packed first
    (None: it is read into memory)."""
    if pack_into is not None:
        gallery = _model_data(model, gallery, pack_into, ink=ink, progress=progress is not False, doing="indexing")
    table, folder = _read_folder(model, gallery, ink=ink, min_images=1, progress=progress)
    if folder.skipped or (model.modality == "ink" and folder.ink_outliers):  # photos have no ink to disagree on
        print(folder.summary())
    emb = _embed_table(model.params, table, progress=progress)
    return Index.build(
        model.params,
        np.asarray(emb),
        [table.class_names[c] for c in table.labels],
        paths=[str(Path(folder.root) / p) for p in table.paths],
        backend=backend,
    )


def _top_classes(model: Model, index: Index, queries: Sequence[str | Path], k: int) -> list[dict]:
    """Per query, the ``k`` gallery classes with the highest score (a class scores its best image)."""
    labels = np.asarray(index.labels)
    classes = len(set(labels.tolist()))
    if not 1 <= k <= classes:
        raise InputError(f"k={k}, but the gallery has {classes} classes: choose k in 1..{classes}")
    x = _read_files(model, queries)
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
    adapters.check_files(list(queries), model.modality)  # before the gallery is read
    return _top_classes(model, gallery_index(model, gallery), queries, k)


def build_index(
    model: Model, gallery: str | Path, out: str | Path, overwrite: bool = False, approximate: bool = False
) -> Path:
    """Embed ``gallery`` once into the index folder ``out``: ``index.npz`` and a copy of the model.
    ``approximate``: an HNSW graph (``backend="hnsw"``), its recall against exact search measured
    (``Index.recall``), printed and saved with it. A gallery folder too large for memory is packed
    into ``out/packed`` first (kept: a rerun resumes it) and embedded block by block. In a
    multi-process run (``jax.distributed``) each process embeds its share and process 0 writes the index.

    ``out`` must be new or empty; an index folder already there (one that a build interrupted before
    its end left included) is replaced only with ``overwrite``; anything else is refused."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out} exists and is a file, not a siamax index folder: choose a new path")
        ours = {INDEX_NAME, MODEL_NAME, INDEX_NAME + ".tmp", PACK_NAME}  # what a build writes (Index.save's .tmp)
        found = {p.name for p in out.iterdir()}
        if INDEX_NAME not in found and not found <= ours:
            raise InputError(
                f"{out} exists and is not a siamax index folder (it holds {', '.join(sorted(found - ours)[:3])}): "
                "choose a new path"
            )
        if found and not overwrite:
            what = "a siamax index" if INDEX_NAME in found else "an unfinished siamax index (a build stopped early)"
            raise InputError(f"{out} already holds {what}: pass --overwrite to replace it, or choose a new path")
    if approximate:
        Index(model.params, backend="hnsw")  # refuses a model that it cannot search before the gallery is read
    primary = sharding.is_primary()  # in a multi-process build every process embeds its share; one writes
    index = gallery_index(
        model, gallery, backend="hnsw" if approximate and primary else "jax", pack_into=out / PACK_NAME
    )
    if not primary:
        return out
    if approximate:
        print(approximate_note(index, measure=True))
    out.mkdir(parents=True, exist_ok=True)
    src = model.path / MODEL_NAME if model.path.is_dir() else model.path
    shutil.copyfile(src, out / MODEL_NAME)
    index.save(out / INDEX_NAME)
    return out


def approximate_note(index: Index, measure: bool = False) -> str:
    """One line on an approximate index's recall (measured now with ``measure``, else as saved)."""
    if measure and len(index) > 1:
        index.recall(min(10, len(index) - 1))
    r = index.measured_recall
    measured = (
        f"recall@{r['k']} {r['recall']:.3f} against exact search on {r['queries']} of its items"
        if r
        else "recall not measured"
    )
    return f"approximate index (HNSW): a search may miss some of the best matches; {measured}"


def search_index(index_dir: str | Path, queries: Sequence[str | Path], k: int = 5) -> list[dict]:
    """What :func:`identify` answers, from an index folder made by :func:`build_index`."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_NAME).is_file():
        raise InputError(
            f"{index_dir} is not a siamax index folder (no {INDEX_NAME}); make one with 'siamax index build'"
        )
    model = load_model(index_dir / MODEL_NAME)
    index = Index.load(index_dir / INDEX_NAME, model.params)
    if index.approximate:
        print(approximate_note(index), file=sys.stderr)
    return _top_classes(model, index, queries, k)
