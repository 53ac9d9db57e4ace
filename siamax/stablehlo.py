"""``siamax export``: the model as serialized StableHLO (``jax.export``), runnable with JAX alone (named
so as not to be confused with ``checkpoint.export``, which writes the weights for siamax itself).

``write(model, out)`` makes the folder ``out``:

* ``embed.jax_export``: images (B, S, S, C) float32 -> embeddings (B, D) float32;
* ``score.jax_export``: two image batches (B, S, S, C) -> (B,) same-class probabilities (``siamax.score``);
* ``score_embeddings.jax_export``: two embedding batches (B, D) -> (B,) (``siamax.score_embeddings``), so a
  gallery is embedded once and compared many times;
* ``manifest.json``: what the functions take and give, the model's threshold, modality, ink, energy,
  fingerprint, the siamax and jax versions, and how to call them.

The weights are constants inside the functions; the batch dimension B is symbolic (any batch size runs
without exporting again). Images are in the model's input convention (``siamax.api``): ink = 1, paper
= 0, values in [0, 1], already square at the model's size: what ``siamax.preprocess`` (or, for a file,
``siamax.data.adapters.read_files`` / 255) gives. Lowered for CPU and CUDA, so a file made on a laptop
runs on a GPU. Loading needs ``jax`` (and ``flatbuffers``, which ``jax.export`` reads files with), not
siamax::

    import json, numpy as np
    from jax import export

    manifest = json.load(open("OUT/manifest.json"))
    fns = {f: export.deserialize(open(f"OUT/{f}.jax_export", "rb").read()) for f in manifest["functions"]}
    p = np.asarray(fns["score"].call(x1, x2))  # x1, x2: float32 (B, S, S, C) in [0, 1], ink = 1
    same = p >= manifest["threshold"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export as jax_export

from siamax import api, checkpoint, provenance
from siamax.errors import InputError

FORMAT = "siamax-stablehlo/1"
MANIFEST = "manifest.json"
SUFFIX = ".jax_export"
FUNCTIONS = ("embed", "score", "score_embeddings")
PLATFORMS = ("cpu", "cuda")  # lowering for CUDA needs no GPU; jax picks the platform it runs on when called

LOADER = """\
import json, numpy as np
from jax import export

manifest = json.load(open("{out}/manifest.json"))
fns = {{f: export.deserialize(open(f"{out}/{{f}}.jax_export", "rb").read()) for f in manifest["functions"]}}
p = np.asarray(fns["score"].call(x1, x2))  # x1, x2: float32 (B, S, S, C) in [0, 1], ink = 1
same = p >= manifest["threshold"]
"""


def _exported(model, platforms: tuple[str, ...]) -> dict[str, bytes]:
    """Each function of :data:`FUNCTIONS`, serialized, with a symbolic batch dimension."""
    params, spec = model.params, model.params.spec
    (b,) = jax_export.symbolic_shape("b")
    images = jax.ShapeDtypeStruct((b, spec.input_size, spec.input_size, spec.channels), jnp.float32)
    embeddings = jax.ShapeDtypeStruct((b, spec.embedding_dim), jnp.float32)
    fns = {
        "embed": (lambda x: api.embed(params, x), (images,)),
        "score": (lambda x1, x2: api.score(params, x1, x2), (images, images)),
        "score_embeddings": (lambda e1, e2: api.score_embeddings(params, e1, e2), (embeddings, embeddings)),
    }
    return {
        name: bytes(jax_export.export(jax.jit(f), platforms=platforms)(*args).serialize())
        for name, (f, args) in fns.items()
    }


def manifest(model, platforms: tuple[str, ...] = PLATFORMS) -> dict:
    """What ``manifest.json`` holds for ``model`` (a ``commands.Model``)."""
    spec = model.params.spec
    s, c, d = spec.input_size, spec.channels, spec.embedding_dim
    images = {"shape": ["B", s, s, c], "dtype": "float32"}
    return {
        "format": FORMAT,
        "siamax_version": provenance.siamax_version(),
        "jax_version": jax.__version__,
        "fingerprint": checkpoint.fingerprint(model.params),
        "platforms": list(platforms),
        "input_shape": [s, s, c],
        "input_size": s,
        "channels": c,
        "input_convention": "float32 in [0, 1], ink = 1, paper = 0 (siamax.preprocess's output)",
        "embedding_dim": d,
        "energy": spec.energy,
        "threshold": model.threshold,
        "threshold_from": model.threshold_from,
        "modality": model.modality,
        "ink": model.ink,
        "mel": None if model.mel is None else dataclasses.asdict(model.mel),
        "functions": {
            "embed": {"file": "embed" + SUFFIX, "args": [images], "returns": {"shape": ["B", d], "dtype": "float32"}},
            "score": {
                "file": "score" + SUFFIX,
                "args": [images, images],
                "returns": {"shape": ["B"], "dtype": "float32", "meaning": "P(same class); same if >= threshold"},
            },
            "score_embeddings": {
                "file": "score_embeddings" + SUFFIX,
                "args": [{"shape": ["B", d], "dtype": "float32"}] * 2,
                "returns": {"shape": ["B"], "dtype": "float32", "meaning": "score() from embed()'s outputs"},
            },
        },
        "how_to_call": LOADER.format(out="OUT"),
    }


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new, an empty folder, or (with ``overwrite``) an earlier export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out} exists and is a file: choose a new folder for the export")
    found = {p.name for p in out.iterdir()}
    ours = {MANIFEST} | {f + SUFFIX for f in FUNCTIONS}
    if found and not found <= ours:
        raise InputError(
            f"{out} exists and is not a siamax export (it holds {', '.join(sorted(found - ours)[:3])}): "
            "choose a new folder"
        )
    if found and not overwrite:
        raise InputError(f"{out} already holds a siamax export: pass --overwrite to replace it, or choose a new folder")


def write(model, out: str | Path, *, overwrite: bool = False, platforms: tuple[str, ...] = PLATFORMS) -> Path:
    """Export ``model`` (a ``commands.Model``) into the folder ``out`` (module docstring). The files are
    written into a temporary folder beside ``out`` and renamed into place: never half an export."""
    out = Path(out)
    _check_out(out, overwrite)
    blobs = _exported(model, tuple(platforms))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the export is an ordinary folder
    try:
        for name, blob in blobs.items():
            (tmp / (name + SUFFIX)).write_bytes(blob)
        (tmp / MANIFEST).write_text(json.dumps(manifest(model, tuple(platforms)), indent=1) + "\n")
        if out.exists():  # checked above: empty, or an earlier export that overwrite replaces
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
