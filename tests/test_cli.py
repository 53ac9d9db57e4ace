"""The `siamax` command end to end on real folders: Omniglot characters unpacked from the official
images_background_small1.zip, MNIST digits written as PNGs. Train for a few steps, evaluate, verify,
identify, index build + search (the same answers as identify), and bad input to every subcommand."""

import json
import shutil
import subprocess
import sys
import warnings
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


@pytest.mark.slow
def test_train_exports_a_model_with_threshold_and_reports_the_test_classes(model, characters, capsys):
    meta = commands.checkpoint.read_metadata(model)
    assert 0.0 < meta["threshold"] < 1.0 and meta["ink"] == "dark" and meta["data"] == str(characters)
    splits = json.loads((model / "splits.json").read_text())
    assert sum(len(splits["classes"][s]) for s in ("train", "validation", "test")) == 50
    r = json.loads((model / "results.json").read_text())
    n_test = len(splits["classes"]["test"])
    assert r["data"]["classes"] == 50 and r["data"]["classes_per_part"][2] == n_test
    # The main job's section names for the same measures, raw pixels beside on the same pairs and trials.
    assert set(r) >= {"verification", "random_5way_1shot", "retrieval", "pixels", "training", "config"}
    assert set(r["pixels"]) == {"verification", "random_5way_1shot", "retrieval"}
    assert r["verification"]["threshold"] == meta["threshold"] and r["verification"]["threshold_rule"] == "eer"
    for name in ("roc.png", "score_histograms.png", "retrieval_grid.png", "embedding_map.png"):
        assert (model / name).stat().st_size > 0
    # Rerunning the same command resumes (nothing left to train) and gives the same model.
    before = (model / "model.msgpack").read_bytes()
    assert cli.main(["train", str(characters), "--workdir", str(model), *TINY]) == 0
    assert "resuming" in capsys.readouterr().out and (model / "model.msgpack").read_bytes() == before
    # The same work directory with another setting is refused.
    assert cli.main(["train", str(characters), "--workdir", str(model), *TINY, "--learning-rate", "0.5"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_on_new_classes_next_to_pixels(model, digits, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", str(model), str(digits), "--n-way", "5", "--trials", "40", "--pairs", "200", "--out", str(out)]
    assert cli.main([*args, "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "raw pixels" in text and "verification ROC AUC" in text
    r = json.loads((tmp_path / "e.json").read_text())
    v = r["verification"]
    assert set(v) >= {"roc_auc", "eer", "threshold", "accuracy"} and v["threshold_from"] == "validation"
    assert v["threshold"] == commands.checkpoint.read_metadata(model)["threshold"]  # the stored one
    assert r["random_5way_1shot"]["trials"] == 40 and 0 <= r["random_5way_1shot"]["accuracy"] <= 1
    assert set(r["retrieval"]) >= {"precision_at_1", "recall_at_5", "map_at_r"}
    assert r["pixels"]["random_5way_1shot"]["trials"] == 40 and r["data"]["classes"] == 10
    assert r["pixels"]["verification"]["threshold_from"] == "eer_on_these_pairs"  # pixels have none of their own
    assert {p.name for p in out.iterdir()} >= {"evaluation.json", "roc.png", "retrieval_grid.png", "embedding_map.png"}


@pytest.mark.slow
def test_evaluate_an_ensemble_and_with_tta(model, digits, tmp_path, capsys):
    args = ["--n-way", "5", "--trials", "40", "--pairs", "200", "--no-plots", "--no-progress"]
    runs = {}
    for name, models, extra in (("one", [model], []), ("twice", [model, model], []),
                                ("tta", [model, model], ["--tta", "2"])):  # fmt: skip
        assert cli.main(["evaluate", *map(str, models), str(digits), *args, *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "evaluation.json").read_text())
        runs[name]["printed"] = capsys.readouterr().out
    one, twice, tta = runs["one"], runs["twice"], runs["tta"]
    # Two copies of one model: the mean of two equal probabilities is that probability.
    for key in ("random_5way_1shot", "verification", "retrieval"):
        for measure, value in one[key].items():
            if isinstance(value, float):
                assert twice[key][measure] == pytest.approx(value, abs=1e-6), (key, measure)
    assert twice["verification"]["threshold"] == pytest.approx(one["verification"]["threshold"])
    assert twice["verification"]["threshold_from"].startswith("mean of the members'")
    assert one["cost"]["tower_passes_per_image"] == 1 and twice["cost"]["members"] == 2
    assert tta["cost"] == {**tta["cost"], "tta": 2, "members": 2, "tower_passes_per_image": 4}
    assert "4 tower passes per image" in tta["printed"]
    assert tta["verification"]["roc_auc"] != one["verification"]["roc_auc"]  # the distortions change the scores


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_siamax_command_is_installed():
    exe = shutil.which("siamax") or str(Path(sys.executable).parent / "siamax")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "siamax train DATA" in out.stdout
    out = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "[folder: 14]" in out.stdout and "--max-minutes" in out.stdout


# ---------------------------------------------------------------------------------------------
# The command tried as a new user would: tiny folders written here, an untrained tiny model.


def _tiny_folder(root: Path, classes: int = 14, per_class: int = 4) -> Path:
    """``classes`` class folders of ``per_class`` 24 x 24 PNGs (dark blobs on white, one pattern per class)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        pattern = np.kron(rng.random((12, 12)) > 0.7, np.ones((2, 2), bool))
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            x = np.full((24, 24), 255, np.uint8)
            x[pattern & (rng.random((24, 24)) > 0.1)] = 0
            Image.fromarray(x).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture
def untrained(tmp_path):
    """A tiny model exported untrained (its answers do not matter here), and a tiny class folder."""
    import jax

    from siamax import api, checkpoint

    path = checkpoint.export(api.init(jax.random.key(0), "tiny"), tmp_path / "m", metadata={"ink": "dark"})
    return path.parent, _tiny_folder(tmp_path / "folder", classes=6, per_class=2)


def _refused(capsys, *argv) -> str:
    """Run the command; it must end in one error line (argparse's ``siamax X: error: ...`` for a bad flag
    value, ``error: ...`` otherwise), exit status 2, no traceback. Returns the error line."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse refuses a flag's value itself
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.mark.parametrize("minutes", ["0", "-5", "nan", "inf", "soon"])
def test_train_refuses_a_time_budget_that_is_not_a_positive_number_of_minutes(tmp_path, capsys, minutes):
    data = _tiny_folder(tmp_path / "data", classes=2, per_class=2)
    line = _refused(capsys, "train", str(data), "--workdir", str(tmp_path / "w"), "--max-minutes", minutes)
    assert "--max-minutes" in line and "positive number of minutes" in line
    assert not (tmp_path / "w").exists()  # refused before anything was made


def test_evaluate_refuses_bad_n_way_and_trials_before_any_work(tmp_path, capsys):
    missing = str(tmp_path / "no_model")  # never read: the arguments are refused first
    data = str(tmp_path / "no_data")
    line = _refused(capsys, "evaluate", missing, data, "--n-way", "1")
    assert "--n-way" in line and "2 or more" in line
    line = _refused(capsys, "evaluate", missing, data, "--n-way", "5", "--trials", "52")
    assert "--trials 52 is not a multiple of --n-way 5" in line and "--trials 55 or 50" in line
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "a multiple of --n-way" in shown and "(default 400, rounded up to a multiple of --n-way)" in shown
    assert cli._trials(None, 5) == 400 and cli._trials(None, 3) == 402 and cli._trials(50, 5) == 50


def test_evaluate_checks_its_output_paths_before_any_work(tmp_path, capsys):
    missing, data = str(tmp_path / "no_model"), str(tmp_path / "no_data")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = ["--out", str(tmp_path / "out")]
    line = _refused(capsys, "evaluate", missing, data, *out, "--json", str(tmp_path / "missing" / "e.json"))
    assert "--json" in line and "does not exist" in line and str(tmp_path / "missing") in line
    line = _refused(capsys, "evaluate", missing, data, *out, "--json", str(tmp_path))
    assert "is a folder" in line
    line = _refused(capsys, "evaluate", missing, data, "--out", str(a_file / "sub"))
    assert "--out" in line and "cannot be created" in line and "is a file" in line
    line = _refused(capsys, "evaluate", missing, data, "--out", str(a_file))
    assert "--out" in line and "is a file" in line
    # Good paths pass the check (a missing --out folder may be created): the model is the next thing read.
    line = _refused(capsys, "evaluate", missing, data, "--out", str(tmp_path / "new" / "deeper"))
    assert "no exported siamax model" in line and not (tmp_path / "new").exists()


def test_index_build_refuses_to_replace_an_index_without_overwrite(untrained, tmp_path, capsys):
    model, gallery = untrained
    index = tmp_path / "idx"
    assert cli.main(["index", "build", str(model), str(gallery), str(index)]) == 0
    capsys.readouterr()
    before = (index / "index.npz").stat().st_mtime_ns
    line = _refused(capsys, "index", "build", str(model), str(gallery / "missing"), str(index))
    assert "already holds a siamax index" in line and "--overwrite" in line  # before the gallery is even read
    assert (index / "index.npz").stat().st_mtime_ns == before
    assert cli.main(["index", "build", str(model), str(gallery), str(index), "--overwrite"]) == 0
    assert "written to" in capsys.readouterr().out
    (index / "index.npz").unlink()  # a build stopped between the model's copy and the index
    line = _refused(capsys, "index", "build", str(model), str(gallery), str(index))
    assert "an unfinished siamax index" in line
    (index / "notes.txt").write_text("mine")
    line = _refused(capsys, "index", "build", str(model), str(gallery), str(index), "--overwrite")
    assert "not a siamax index folder" in line and "notes.txt" in line


def test_an_approximate_index_says_so_and_answers_as_the_exact_one(untrained, tmp_path, capsys):
    import jax

    from siamax import api, checkpoint
    from siamax.model import MODELS

    koch, gallery = untrained
    spec = MODELS["tiny"].replace(energy="cosine")
    model = checkpoint.export(api.init(jax.random.key(0), spec), tmp_path / "cos", metadata={"ink": "dark"}).parent
    queries = [str(p) for p in sorted(gallery.rglob("*.png"))[:3]]
    answers = {}
    for name, extra in (("exact", []), ("approximate", ["--approximate"])):
        assert cli.main(["index", "build", str(model), str(gallery), str(tmp_path / name), *extra]) == 0
        built = capsys.readouterr().out
        assert ("approximate index (HNSW)" in built and "recall@10 1.000 against exact search" in built) == bool(extra)
        assert cli.main(["index", "search", str(tmp_path / name), *queries, "-k", "3", "--json"]) == 0
        out = capsys.readouterr()
        assert ("approximate index (HNSW): a search may miss" in out.err) == bool(extra)
        answers[name] = [[m["label"] for m in r["matches"]] for r in json.loads(out.out)]
    assert answers["approximate"] == answers["exact"]  # 12 items: the graph's search is exhaustive
    line = _refused(capsys, "index", "build", str(koch), str(gallery), str(tmp_path / "l1"), "--approximate")
    assert "weighted_l1" in line and "not a faiss metric" in line


def test_skipped_files_and_link_loops_are_reported_once_plainly(untrained, tmp_path, capsys):
    model, gallery = untrained
    (gallery / "c0" / "loop").symlink_to("loop")  # a symbolic link to itself
    (gallery / "c1" / "notes.txt").write_text("not an image")
    (gallery / "self").symlink_to(gallery / "self")
    query = str(gallery / "c2" / "0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the report is the command's line, not a warning
        assert cli.main(["identify", str(model), str(gallery), query, "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Warning" not in captured.err
    summary = [line for line in captured.out.splitlines() if "file(s)" in line]
    assert len(summary) == 1, captured.out
    for what in ("skipped 3 file(s)", "self (a symbolic link that loops", "c0/loop (a symbolic link", "c1/notes.txt"):
        assert what in summary[0]


@pytest.mark.slow
def test_ctrl_c_during_train_stops_with_one_line_and_the_same_command_resumes(tmp_path):
    import os
    import signal

    data = _tiny_folder(tmp_path / "data")
    workdir = tmp_path / "w"
    command = [sys.executable, "-m", "siamax.cli", "train", str(data), "--workdir", str(workdir), "--model", "tiny"]
    command += ["--epochs", "3", "--steps-per-epoch", "2", "--val-trials", "20", "--verification-pairs", "100"]
    command += ["--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    root = Path(__file__).resolve().parents[1]
    # Ctrl-C acts as in a terminal even where pytest runs as a background job (which starts with SIGINT ignored).
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = []
        for line in run.stdout:  # "epoch 1: ..." is printed once the epoch's checkpoints are written
            seen.append(line)
            if line.startswith("epoch 1:"):
                run.send_signal(signal.SIGINT)
                break
        out, err = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 130, "".join(seen) + out + err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "interrupted: stopped by Ctrl-C; rerun the same command to resume (training carries on from its last "
        "saved epoch)"
    ], err
    assert (workdir / "checkpoints" / "latest" / "1").is_dir()
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and "Traceback" not in again.stderr
    epochs = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]  # every epoch once: nothing lost, nothing trained twice
    assert (workdir / "model.msgpack").is_file() and (workdir / "results.json").is_file()
