"""The `siamax` command end to end on real folders: Omniglot characters unpacked from the official
images_background_small1.zip, MNIST digits written as PNGs. Train for a few steps, evaluate, verify,
identify, index build + search (the same answers as identify), and bad input to every subcommand."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from siamax import cli, commands
from siamax.data import _paths

# A tiny network and schedule: the machinery, not the accuracy, is under test.
TINY = ["--model", "tiny", "--epochs", "2", "--steps-per-epoch", "3", "--episode-chars", "8", "--val-trials", "40"]
TINY += ["--verification-pairs", "200", "--no-progress"]


@pytest.fixture(scope="module")
def characters(tmp_path_factory, siamax_data_dir):
    """Greek and Latin (50 characters x 20 drawers) as a group/class tree of the official PNGs."""
    root = tmp_path_factory.mktemp("chars")
    zip_path = siamax_data_dir / _paths.ARCHIVES["omniglot_small1_zip"].relpath
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[1] in ("Greek", "Latin") and name.endswith(".png"):
                target = root / parts[1] / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist):
    """8 test images of each digit as PNGs in DIR/<digit>/ (light ink on dark)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    for d in range(10):
        (root / str(d)).mkdir()
        for i, idx in enumerate(np.flatnonzero(mnist.test_labels == d)[:8]):
            Image.fromarray(mnist.test_images[idx]).save(root / str(d) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model(characters, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    assert cli.main(["train", str(characters), "--workdir", str(workdir), *TINY]) == 0
    return workdir


def _json_out(capsys):
    return json.loads(capsys.readouterr().out)


def _error(capsys, code):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err  # progress bars may share stderr
    return errors[0]


def test_train_exports_a_model_with_threshold_and_reports_the_test_classes(model, characters, capsys):
    meta = commands.checkpoint.read_metadata(model)
    assert 0.0 < meta["threshold"] < 1.0 and meta["ink"] == "dark" and meta["data"] == str(characters)
    splits = json.loads((model / "splits.json").read_text())
    assert sum(len(splits["classes"][s]) for s in ("train", "validation", "test")) == 50
    r = json.loads((model / "results.json").read_text())
    assert r["data"]["classes"] == len(splits["classes"]["test"]) and set(r) >= {"verification", "oneshot", "retrieval"}
    assert set(r["pixel_baseline"]) == {"verification", "oneshot", "retrieval"}
    for name in ("roc.png", "score_histograms.png", "retrieval_grid.png", "embedding_map.png"):
        assert (model / name).stat().st_size > 0
    # Rerunning the same command resumes (nothing left to train) and gives the same model.
    before = (model / "model.msgpack").read_bytes()
    assert cli.main(["train", str(characters), "--workdir", str(model), *TINY]) == 0
    assert "resuming" in capsys.readouterr().out and (model / "model.msgpack").read_bytes() == before
    # The same work directory with another setting is refused.
    assert cli.main(["train", str(characters), "--workdir", str(model), *TINY, "--learning-rate", "0.5"]) == 2
    assert "different config" in capsys.readouterr().err


def test_evaluate_on_new_classes_next_to_pixels(model, digits, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", str(model), str(digits), "--n-way", "5", "--trials", "40", "--pairs", "200", "--out", str(out)]
    assert cli.main([*args, "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "raw pixels" in text and "verification ROC AUC" in text
    r = json.loads((tmp_path / "e.json").read_text())
    v = r["verification"]
    assert set(v) >= {"roc_auc", "eer", "threshold", "accuracy"} and v["threshold_from"] == "validation"
    assert r["oneshot"]["5way"]["trials"] == 40 and 0 <= r["oneshot"]["5way"]["accuracy"] <= 1
    assert set(r["retrieval"]) >= {"precision_at_1", "recall_at_5", "map_at_r"}
    assert r["pixel_baseline"]["oneshot"]["5way"]["trials"] == 40 and r["data"]["classes"] == 10
    assert {p.name for p in out.iterdir()} >= {"evaluation.json", "roc.png", "retrieval_grid.png", "embedding_map.png"}


def test_verify_identify_and_the_index_agree(model, characters, tmp_path, capsys):
    a, b = (
        (characters / "Greek" / "character01").iterdir().__next__(),
        sorted((characters / "Greek" / "character01").iterdir())[1],
    )
    other = sorted((characters / "Latin" / "character05").iterdir())[0]
    assert cli.main(["verify", str(model), str(a), str(b), "--json"]) == 0
    r = _json_out(capsys)
    assert set(r) == {"probability", "same", "threshold"} and 0 <= r["probability"] <= 1
    assert r["same"] == (r["probability"] >= r["threshold"])
    assert cli.main(["verify", str(model), str(a), str(other)]) == 0
    assert "p = " in capsys.readouterr().out
    # A gallery of one image per class of Greek; the queries are other drawings.
    gallery = tmp_path / "gallery"
    for c in sorted((characters / "Greek").iterdir())[:12]:
        (gallery / c.name).mkdir(parents=True)
        shutil.copy(sorted(c.iterdir())[0], gallery / c.name / "0.png")
    queries = [str(sorted(c.iterdir())[5]) for c in sorted((characters / "Greek").iterdir())[:3]]
    assert cli.main(["identify", str(model), str(gallery), *queries, "-k", "3", "--json"]) == 0
    identified = _json_out(capsys)
    assert [r["query"] for r in identified] == queries
    assert all(len(r["matches"]) == 3 and set(r["matches"][0]) == {"label", "score", "path"} for r in identified)
    assert cli.main(["index", "build", str(model), str(gallery), str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert cli.main(["index", "search", str(tmp_path / "idx"), *queries, "-k", "3", "--json"]) == 0
    searched = _json_out(capsys)
    for x, y in zip(identified, searched):
        assert [m["label"] for m in x["matches"]] == [m["label"] for m in y["matches"]]
        np.testing.assert_allclose([m["score"] for m in x["matches"]], [m["score"] for m in y["matches"]], rtol=1e-5)


def test_bad_input_to_every_subcommand_is_one_error_line(model, characters, tmp_path, capsys):
    some_png = str(next((characters / "Greek" / "character01").iterdir()))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    not_model = tmp_path / "model.msgpack"
    not_model.write_bytes(b"\x93not a model")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["train", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w"), *TINY], "does not exist"),
        (["train", str(empty), "--workdir", str(tmp_path / "w2"), *TINY], "empty"),
        (["evaluate", str(not_model), str(characters)], "not a readable siamax model"),
        (["evaluate", str(tmp_path / "missing_model"), str(characters)], "no exported siamax model"),
        (["evaluate", str(model), str(characters), "--n-way", "99"], "needs 99 classes"),
        (["verify", str(model), some_png, str(tmp_path / "missing.png")], "not found"),
        (["verify", str(model), some_png, str(not_image)], "not readable as images"),
        (["identify", str(model), str(empty), some_png], "empty"),
        (["identify", str(model), str(characters / "Greek"), some_png, "-k", "500"], "k=500"),
        (["index", "search", str(tmp_path), some_png], "not a siamax index folder"),
        (["index", "build", str(model), str(characters / "Greek"), str(characters)], "not a siamax index folder"),
    ]
    for args, words in cases:
        assert words in _error(capsys, cli.main(args)), args


def test_the_siamax_command_is_installed():
    exe = shutil.which("siamax") or str(Path(sys.executable).parent / "siamax")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "siamax train DATA" in out.stdout
    out = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "[folder: 14]" in out.stdout and "--max-minutes" in out.stdout
