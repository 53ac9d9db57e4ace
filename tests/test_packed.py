"""Packed datasets (``siamax.data.packed``, ``siamax pack``): a folder written once as ArrayRecord shards,
read back as the one dataset model; training batches streamed from it equal those drawn from memory."""

import json
import zipfile

import jax
import numpy as np
import pytest

import siamax
from siamax import Index, cli, commands, config
from siamax.data import LabelledImages, _paths, image_folder, make_sampler, packed
from siamax.errors import DataError, InputError
from siamax.evaluators import embedders, retrieval
from tests.test_cli import TINY, _tiny_folder


def _table(n_classes: int = 8, per_class: int = 5, size: int = 12) -> LabelledImages:
    rng = np.random.default_rng(0)
    n = n_classes * per_class
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    groups = np.arange(n_classes) % 2
    labels = np.repeat(np.arange(n_classes), per_class)
    names = tuple(f"c{c}" for c in range(n_classes))
    return LabelledImages(jax.numpy.asarray(images), labels, names, groups, ("g0", "g1"), name="synthetic")


CASES = {
    "fresh_pairs_distorted": ("pairs", config.DataConfig(n_pairs=0, batch_size=8, distortions=8)),
    "fixed_pairs_distorted": ("pairs", config.DataConfig(n_pairs=200, batch_size=8, distortions=2)),
    "classes_turned_thickened": (
        "classes",
        config.DataConfig(episode_chars=4, episode_drawers=3, episode_alphabets=2, rotations=True, thicken=0.5),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_batches_are_the_in_memory_ones(case, tmp_path):
    form, cfg = CASES[case]
    table = _table()
    packed.pack_table(table, tmp_path / "p", shard_size=7, progress=False)
    on_disk, _ = packed.load_packed(tmp_path / "p")
    assert isinstance(on_disk.images, packed.PackedImages)
    for shard in ((0, 1), (1, 2)):
        memory = make_sampler(cfg, form, table, seed=3, steps_per_epoch=6, shard=shard)
        stream = make_sampler(cfg, form, on_disk, seed=3, steps_per_epoch=6, shard=shard)
        assert stream.streaming and not memory.streaming
        streamed = list(stream.batches(4, 9))  # through Grain's prefetching pipeline, across an epoch boundary
        assert len(streamed) == 5
        for step, b in zip(range(4, 9), streamed):
            a = memory.batch(step)
            assert sorted(a) == sorted(b)
            for k in a:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{k} of step {step}")
        np.testing.assert_array_equal(np.asarray(stream.batch(2)[form == "pairs" and "x1" or "x"]),
                                      np.asarray(memory.batch(2)[form == "pairs" and "x1" or "x"]))  # fmt: skip


def test_a_packed_view_reads_rows_on_demand_and_refuses_too_much(tmp_path, monkeypatch):
    table = _table()
    packed.pack_table(table, tmp_path / "p", shard_size=9, progress=False)
    on_disk, manifest = packed.load_packed(tmp_path / "p")
    assert manifest["n_images"] == 40 and len(manifest["shards"]) == 5 and manifest["class_counts"] == [5] * 8
    part = on_disk.take([31, 2, 17])  # a view: nothing read yet
    assert isinstance(part.images, packed.PackedImages) and part.images.shape == (3, 12, 12)
    np.testing.assert_array_equal(np.asarray(part.images), np.asarray(table.images)[[31, 2, 17]])
    assert part.class_names == table.take([31, 2, 17]).class_names
    np.testing.assert_array_equal(on_disk.images[5], np.asarray(table.images)[5])
    monkeypatch.setattr(packed, "MEMORY_BUDGET", 12 * 12 * 10)
    with pytest.raises(InputError, match="into memory at once is refused"):
        np.asarray(on_disk.images)
    assert np.asarray(part.images).shape == (3, 12, 12)  # a small part still reads


@pytest.mark.slow  # reads and packs the real Omniglot images
def test_pack_a_real_folder_resume_rewrite_and_refuse(tmp_path, capsys, siamax_data_dir):
    src = _omniglot_folder(siamax_data_dir, tmp_path / "src")
    out = tmp_path / "packed"
    assert cli.main(["pack", str(src), str(out), "--image-size", "28", "--shard-size", "150", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "480 examples of 24 classes in 4 shard(s)" in said and "siamax train" in said
    table, manifest = packed.load_packed(out, "tiny")
    ref, _ = image_folder(src, size=28)  # the in-memory route: the same pixels, labels, names, groups, paths
    np.testing.assert_array_equal(np.asarray(table.images), np.asarray(ref.images))
    assert (table.labels == ref.labels).all() and table.paths == ref.paths and table.class_names == ref.class_names
    assert manifest["ink"] == "dark" and manifest["source"] == str(src.resolve())

    # Interrupted and damaged: shard 2 lost, shard 1 overwritten in place, the manifest not yet written.
    (out / "shard-00002.array_record").unlink()
    (out / "shard-00002.array_record.json").unlink()
    with (out / "shard-00001.array_record").open("r+b") as f:
        f.write(b"\0" * 64)
    (out / packed.MANIFEST).unlink()
    with pytest.raises(DataError, match="unfinished pack"):
        packed.load_packed(out)
    assert cli.main(["pack", str(src), str(out), "--image-size", "28", "--shard-size", "150", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "2 shard(s) written, 2 kept" in captured.out and "shard-00001.array_record" in captured.out
    assert "shard-00001.array_record is damaged" in captured.err
    again, _ = packed.load_packed(out)
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(ref.images))

    # Other settings into the same OUT, a model of another size, a pack given as DATA: one error line each.
    assert cli.main(["pack", str(src), str(out), "--image-size", "35", "--shard-size", "150"]) == 2
    assert "holds a pack of other files or settings (size differ)" in capsys.readouterr().err
    with pytest.raises(InputError, match="packed for 28x28"):
        packed.load_packed(out, "reduced35")
    assert cli.main(["pack", str(out), str(tmp_path / "p2")]) == 2
    assert "already a packed dataset" in capsys.readouterr().err
    assert json.loads((out / packed.PLAN).read_text())["shard_size"] == 150


def _omniglot_folder(data_dir, root):
    """Greek's 24 characters x 20 drawers as DIR/<class>/<png>, from the official background zip."""
    with zipfile.ZipFile(data_dir / _paths.ARCHIVES["omniglot_small1_zip"].relpath) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[1] == "Greek" and name.endswith(".png"):
                target = root / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    return root


@pytest.mark.slow  # trains twice
def test_siamax_train_packs_a_folder_too_large_for_memory_and_trains_as_in_memory(tmp_path, capsys, monkeypatch):
    src = _tiny_folder(tmp_path / "folder", classes=14, per_class=4)
    runs = {}
    assert cli.main(["train", str(src), "--workdir", str(tmp_path / "memory"), *TINY]) == 0
    runs["memory"] = capsys.readouterr().out
    budget = packed.MEMORY_BUDGET
    monkeypatch.setattr(packed, "MEMORY_BUDGET", 20_000)  # below the folder's 56 x 28 x 28 bytes, above a test part's
    assert cli.main(["train", str(src), "--workdir", str(tmp_path / "stream"), *TINY]) == 0
    runs["stream"] = capsys.readouterr().out
    assert (
        "56 files would take 43 KiB in memory (more than 20 KiB)" in runs["stream"]
        and "training from disk" in runs["stream"]
    )
    assert "a packed dataset (ink) of 56 examples of 14 classes" in runs["stream"]
    lines = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in runs}
    assert [r["loss"] for r in lines["memory"]] == [r["loss"] for r in lines["stream"]]  # the same batches
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in runs)
    assert a["verification"] == b["verification"] and a["retrieval"] == b["retrieval"]
    # The same command again: the pack is kept as it is (its checksum verified), not written again.
    assert cli.main(["train", str(src), "--workdir", str(tmp_path / "stream"), *TINY]) == 0
    assert "0 shard(s) written, 1 kept from an earlier run" in capsys.readouterr().out

    # A gallery index from the pack, embedded block by block, is the folder's.
    monkeypatch.setattr(packed, "MEMORY_BUDGET", budget)
    monkeypatch.setattr(embedders, "EMBED_BLOCK", 16)
    for name, data in (("idx_folder", src), ("idx_pack", tmp_path / "stream" / "packed")):
        assert cli.main(["index", "build", str(tmp_path / "memory"), str(data), str(tmp_path / name)]) == 0
    a, b = (Index.load(tmp_path / n / "index.npz") for n in ("idx_folder", "idx_pack"))
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
    assert list(a.labels) == list(b.labels) and list(a.paths) == list(b.paths)

    # `siamax evaluate` of the pack (its images read as each evaluator needs them, retrieval searched in
    # blocks) and of a folder packed on the fly (too large for memory) give the folder's very figures.

    monkeypatch.setattr(retrieval, "BLOCK_BYTES", 10 * 28 * 28)  # several blocks (the last of 6 images)
    runs = {"folder": src, "pack": tmp_path / "stream" / "packed"}
    for name, data in runs.items():
        args = ["evaluate", str(tmp_path / "memory"), str(data), "--out", str(tmp_path / f"ev_{name}"), "--no-plots"]
        assert cli.main(args) == 0
    monkeypatch.setattr(packed, "MEMORY_BUDGET", 20_000)
    args = ["evaluate", str(tmp_path / "memory"), str(src), "--out", str(tmp_path / "ev_auto"), "--no-plots"]
    assert cli.main(args) == 0
    assert "packing them once into" in capsys.readouterr().out and (tmp_path / "ev_auto" / "packed").is_dir()
    results = [json.loads((tmp_path / f"ev_{n}" / "evaluation.json").read_text()) for n in ("folder", "pack", "auto")]
    for key in ("verification", "random_5way_1shot", "retrieval", "pixels"):
        assert results[0][key] == results[1][key] == results[2][key], key


@pytest.mark.slow  # reads real FSDD clips
def test_a_folder_of_sound_clips_packs_as_audio_folder_reads_it(tmp_path, siamax_data_dir):
    """Spoken digits (3 digits x 4 takes of one speaker) as DIR/<digit>/<clip>: the pack holds the log-mel
    images that ``audio_folder`` makes, and says it holds audio."""
    from siamax.data import audio_folder

    src = tmp_path / "clips"
    for digit in range(3):
        (src / str(digit)).mkdir(parents=True)
        for take in range(4):
            name = f"{digit}_jackson_{take}.wav"
            (src / str(digit) / name).write_bytes((siamax_data_dir / "fsdd" / "recordings" / name).read_bytes())
    report = commands.pack_folder(src, tmp_path / "packed", image_size=35, progress=False)
    assert report.n_images == 12 and report.n_classes == 3
    table, manifest = packed.load_packed(tmp_path / "packed")
    ref, _ = audio_folder(src, size=35)
    np.testing.assert_array_equal(np.asarray(table.images), np.asarray(ref.images))
    assert manifest["modality"] == "audio" and manifest["ink"] == "light" and "mel" in manifest
    assert commands.folder_kind(tmp_path / "packed").modality == "audio"


@pytest.mark.slow  # trains three times
def test_training_from_a_pack_interrupted_and_resumed_equals_training_in_memory(tmp_path):
    """The streaming pipeline's position is the global step, which the checkpoint holds: a run from a pack,
    interrupted during epoch 2 and resumed by a fresh start, ends with the parameters of an uninterrupted
    run on the same images in memory."""
    from siamax import optim, train

    cfg = config.Config.from_flat(
        dict(model="tiny", objective="episodic", episode_chars=4, episode_drawers=2, episode_alphabets=2,
             optimizer="adam", learning_rate=1e-3, epochs=3, steps_per_epoch=3, patience=0, devices=1)
    )  # fmt: skip
    table = _table(size=28)
    packed.pack_table(table, tmp_path / "p", shard_size=16, progress=False)
    on_disk, _ = packed.load_packed(tmp_path / "p")

    def start(t):
        sampler = make_sampler(cfg.data, cfg.objective.batch, t, cfg.seed, cfg.schedule.steps_per_epoch)
        tx, _ = optim.make_optimizer(cfg.optim, cfg.spec.layer_names, sampler.steps_per_epoch)
        params = siamax.init(jax.random.key(0), cfg.spec)
        return train.create_train_state(params, tx, train.Objective(kind=cfg.objective.kind)), sampler

    run = dict(epochs=3, patience=0, seed=0, progress=False)
    reference, _ = train.fit(*start(table), validate=lambda _: 0.5, workdir=tmp_path / "memory", **run)
    calls = {"n": 0}

    def interrupted(_):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C during epoch 2's validation, before its checkpoint
            raise KeyboardInterrupt
        return 0.5

    with pytest.raises(KeyboardInterrupt):
        train.fit(*start(on_disk), validate=interrupted, workdir=tmp_path / "stream", **run)
    resumed, meta = train.fit(*start(on_disk), validate=lambda _: 0.5, workdir=tmp_path / "stream", **run)
    assert meta["epoch"] == 3 and int(resumed.step) == int(reference.step) == 9
    for a, b in zip(jax.tree.leaves(reference.params.weights), jax.tree.leaves(resumed.params.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
