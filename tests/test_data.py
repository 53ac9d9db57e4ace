"""Omniglot / MNIST builders, the alphabet table, Lake's runs, and bad-input errors (real data)."""

import os
import shutil
import time

import numpy as np
import pytest

from siamax import data as D
from siamax import errors
from siamax.data import _paths
from siamax.data import omniglot as og


def test_alphabet_table_is_contiguous_and_complete():
    ids = [(first, n) for _, first, n in og.ALPHABET_TABLE]
    assert ids[0][0] == 1 and all(f + n == nf for (f, n), (nf, _) in zip(ids, ids[1:]))
    assert sum(n for _, n in ids) == 1623
    assert sum(n for _, _, n in og.ALPHABET_TABLE[:30]) == 964
    assert len(set(og.ALPHABETS)) == 50
    assert og.alphabet_char_ids("Tifinagh")[-1] == 964 and og.alphabet_char_ids("Angelic")[0] == 965


def test_omniglot_counts(omniglot):
    assert omniglot.images.shape == (1623, 20, 105, 105) and omniglot.images.dtype == bool
    assert np.bincount(omniglot.char_set).tolist() == [964, 659]
    assert omniglot.ink == "dark" and len(omniglot.alphabets) == 50
    # bool bytes are exactly 0/1 (PIL/npz bools carry 0xFF, which JAX would turn into 255.0).
    assert set(np.unique(omniglot.images.view(np.uint8))) == {0, 1}
    # Native polarity: mostly paper (True); every image has some ink.
    assert 0.85 < omniglot.images.mean() < 0.98
    assert (~omniglot.images).reshape(32460, -1).any(axis=1).all()
    # The one known duplicate: character 192 (Braille) drawers 3 and 19.
    assert np.array_equal(omniglot.images[191, 2], omniglot.images[191, 18])


def test_omniglot_matches_npz(omniglot, siamax_data_dir):
    with np.load(siamax_data_dir / _paths.ARCHIVES["omniglot_evaluation_npz"].relpath) as f:
        assert np.array_equal(omniglot.images[964:], f["images"])


def test_omniglot_tfds_records_carry_metadata(omniglot, siamax_data_dir, siamax_tfds_dir):
    builder = og.omniglot_builder(siamax_data_dir, siamax_tfds_dir)
    assert set(builder.info.features.keys()) == {
        "image",
        "alphabet",
        "alphabet_index",
        "character_index",
        "character_id",
        "drawer",
        "official_set",
    }
    source = builder.as_data_source(split="evaluation")
    assert len(source) == 659 * 20 and len(builder.as_data_source(split="background")) == 964 * 20
    for i in (0, 1234):
        ex = source[i]
        c, d = ex["character_id"] - 1, ex["drawer"] - 1
        assert ex["alphabet"].decode() == og.ALPHABETS[ex["alphabet_index"]] == og.ALPHABETS[og.CHAR_ALPHABET[c]]
        assert ex["character_index"] == og.CHAR_INDEX[c] and ex["official_set"] == 1
        assert np.array_equal(np.asarray(ex["image"]) != 0, omniglot.images[c, d])


def test_alphabet_table_matches_every_small_zip_png(omniglot, siamax_data_dir):
    n = 0
    for name in ("omniglot_small1_zip", "omniglot_small2_zip"):
        path = D.require("omniglot_small", siamax_data_dir, download=False)["omniglot_small"][name]
        for alphabet, nn, char_id, drawer, image in og.read_png_zip(path):
            c = char_id - 1
            assert og.ALPHABETS[omniglot.char_alphabet[c]] == alphabet
            assert omniglot.char_index[c] == nn - 1
            assert np.array_equal(omniglot.images[c, drawer - 1], image)
            n += 1
    assert n == 2720 + 3120


def test_zip_reader_checks_table_and_completeness(siamax_data_dir):
    path = D.require("omniglot_small", siamax_data_dir, download=False)["omniglot_small"]["omniglot_small1_zip"]
    with pytest.raises(ValueError, match="16560 of the 19280 images are missing"):
        og._from_zip(path, "background")  # 2720 PNGs read and matched to the table, the rest absent


def test_load_is_fast_once_prepared(omniglot, siamax_data_dir, siamax_tfds_dir):
    og._load_omniglot.cache_clear()
    t = time.perf_counter()
    again = D.load_omniglot(siamax_data_dir, siamax_tfds_dir)
    assert time.perf_counter() - t < 30  # ~2-3 s on 2 cores; generous for a shared machine
    assert np.array_equal(again.images, omniglot.images)


def test_mnist_counts(mnist, siamax_data_dir):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert len(mnist.train_labels) + len(mnist.test_labels) == 70000
    assert mnist.train_images.dtype == np.uint8 and mnist.ink == "light"
    assert np.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]
    assert abs(mnist.train_images.mean() / 255 - 0.1307) < 1e-3
    raw = D.mnist.read_idx(siamax_data_dir / _paths.ARCHIVES["mnist_test_images"].relpath)
    assert np.array_equal(raw, mnist.test_images)  # original order restored


def test_lake_runs(lake, omniglot):
    assert len(lake) == 20
    for r, (task, (alphabet, drawer_a, drawer_b)) in enumerate(zip(lake, D.LAKE_RUNS)):
        assert task.support.shape == task.query.shape == (20, 105, 105) and task.ink == "dark"
        assert sorted(task.answers.tolist()) == list(range(20)) and task.name == f"run{r + 1:02d}"
        chars = og.alphabet_char_ids(alphabet) - 1

        def match(image, drawer, chars=chars):
            hits = [c for c in chars if np.array_equal(omniglot.images[c, drawer - 1], image)]
            assert len(hits) == 1
            return hits[0]

        support_chars = np.array([match(im, drawer_a) for im in task.support])
        query_chars = np.array([match(im, drawer_b) for im in task.query])
        np.testing.assert_array_equal(query_chars, support_chars[task.answers])  # class_labels.txt is right
    assert set(D.LAKE_ALPHABETS) <= set(D.EVALUATION_ALPHABETS) and len(D.LAKE_ALPHABETS) == 10


# ---- bad input ---------------------------------------------------------------------------------


def _link_data(src, dst, names, corrupt=None):
    """A data folder at dst with symlinks to the real archives; ``corrupt`` is copied with a byte flipped."""
    for n in names:
        rel = _paths.ARCHIVES[n].relpath
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if n == corrupt:
            shutil.copyfile(src / rel, dst / rel)
            with open(dst / rel, "r+b") as f:
                f.seek(1000)
                b = f.read(1)
                f.seek(1000)
                f.write(bytes([b[0] ^ 1]))
        else:
            os.symlink(src / rel, dst / rel)


def test_missing_folder_names_setting_folder_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(D.DataError) as e:
        D.load_omniglot(missing, tmp_path / "tfds", download=False)
    msg = str(e.value)
    assert "SIAMAX_DATA_DIR" in msg and str(missing) in msg and "images_background.npz" in msg
    assert "does not exist" in msg and "\n" not in msg
    with pytest.raises(D.DataError, match="all_runs.zip"):
        D.lake_runs(missing)  # an explicit folder must exist, also when downloads are on
    assert not (tmp_path / "tfds" / "siamax_omniglot" / "1.0.0").exists() and not missing.exists()


def test_missing_file_names_it(tmp_path, siamax_data_dir):
    names = ["mnist_train_images", "mnist_train_labels", "mnist_test_images"]  # no test labels
    _link_data(siamax_data_dir, tmp_path / "data", names)
    with pytest.raises(D.DataError) as e:
        D.load_mnist(tmp_path / "data", tmp_path / "tfds", download=False)
    msg = str(e.value)
    archive = _paths.ARCHIVES["mnist_test_labels"]
    assert str(tmp_path / "data" / archive.relpath) in msg and archive.sha256 in msg and archive.url in msg
    assert "SIAMAX_DATA_DIR" in msg and "\n" not in msg and isinstance(e.value, FileNotFoundError)
    assert "train-images" not in msg  # only the missing file is named


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, siamax_data_dir):
    names = ["omniglot_background_npz", "omniglot_evaluation_npz"]
    _link_data(siamax_data_dir, tmp_path / "data", names, corrupt="omniglot_evaluation_npz")
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(D.ChecksumError) as e:
        D.load_omniglot(tmp_path / "data", tfds_dir)  # a corrupt file is refused, never re-downloaded over
    msg = str(e.value)
    assert "images_evaluation.npz" in msg and _paths.ARCHIVES["omniglot_evaluation_npz"].sha256 in msg
    assert "Delete it" in msg and "\n" not in msg and isinstance(e.value, errors.ChecksumError)
    actual = _paths._sha256(
        str((tmp_path / "data" / _paths.ARCHIVES["omniglot_evaluation_npz"].relpath).resolve()), 0, 0
    )
    assert actual in msg
    leftovers = [p for p in tfds_dir.rglob("*") if "incomplete" in p.name or p.name == "1.0.0"]
    assert leftovers == []
    assert not og.omniglot_builder(tmp_path / "data", tfds_dir).data_path.exists()


def test_checksum_mismatch_small_file(tmp_path, siamax_data_dir):
    _link_data(siamax_data_dir, tmp_path, ["omniglot_all_runs_zip"], corrupt="omniglot_all_runs_zip")
    with pytest.raises(D.ChecksumError, match="all_runs.zip"):
        D.lake_runs(tmp_path)


def test_checksum_mismatch_monkeypatched(monkeypatch, siamax_data_dir, tmp_path):
    bad = _paths.Archive(_paths.ARCHIVES["mnist_test_labels"].relpath, 4542, "0" * 64)
    monkeypatch.setitem(_paths.ARCHIVES, "mnist_test_labels", bad)
    with pytest.raises(D.ChecksumError, match="0{64}"):
        D.load_mnist(siamax_data_dir, tmp_path / "tfds")
    assert not any(p.name == "1.0.0" for p in (tmp_path / "tfds").rglob("*"))


def test_prepare_survives_another_process_finishing_first():
    """TFDS prepares into a temporary folder and renames it; a process that loses that race to a
    concurrent one (seen with parallel sweeps on one machine) must use the winner's dataset."""
    from siamax.data.omniglot import prepare

    class Builder:
        made = 0

        def __init__(self, prepared_by_other: bool):
            Builder.made += 1
            self.prepared_by_other = prepared_by_other

        def download_and_prepare(self):
            if Builder.made == 1:
                raise FileExistsError("Cannot rename incomplete.X_1.0.0: destination 1.0.0 already exists")

        def is_prepared(self):
            return self.prepared_by_other

    assert isinstance(prepare(lambda: Builder(True)), Builder) and Builder.made == 2
    Builder.made = 0
    with pytest.raises(FileExistsError):
        prepare(lambda: Builder(False))
