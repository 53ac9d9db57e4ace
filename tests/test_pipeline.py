"""The one pipeline on folders as users have them: few classes, few images, no test part; one schema."""

import json
import zipfile

import numpy as np
import pytest

from siamax import cli, experiment, metrics
from siamax.data import _paths
from siamax.data.class_splits import hold_out, small_folder_sizes

TINY = ["--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--episode-chars", "4", "--val-trials", "20"]
TINY += ["--verification-pairs", "100", "--no-progress"]


def _folder(root, siamax_data_dir, classes: int, images: int):
    """``classes`` Greek characters x ``images`` drawings as DIR/<class>/<image> (the official PNGs)."""
    zip_path = siamax_data_dir / _paths.ARCHIVES["omniglot_small1_zip"].relpath
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png") and n.split("/")[1] == "Greek")
    by_char: dict = {}
    for n in names:
        by_char.setdefault(n.split("/")[2], []).append(n)
    with zipfile.ZipFile(zip_path) as zf:
        for char in sorted(by_char)[:classes]:
            for n in by_char[char][:images]:
                target = root / char / n.split("/")[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(n))
    return root


@pytest.mark.parametrize(
    "n, sizes",
    [(4, (4, 0, 0)), (5, (3, 0, 2)), (6, (4, 0, 2)), (10, (6, 2, 2)), (20, (14, 3, 3)), (38, (26, 6, 6))],
)
def test_small_folder_sizes_never_leave_a_part_of_one_class(n, sizes):
    got = small_folder_sizes(n, (0.7, 0.15, 0.15))
    assert got == sizes and sum(got) == n and 1 not in got[1:]


def test_hold_out_takes_two_images_of_classes_that_can_spare_them(tiny_table):
    rest, held = hold_out(tiny_table, seed=0)
    counts = tiny_table.class_counts()
    assert held.n_images == 2 * int((counts >= 4).sum()) and rest.n_images + held.n_images == tiny_table.n_images
    assert set(held.class_names) == {tiny_table.class_names[c] for c in np.flatnonzero(counts >= 4)}
    paths = set(rest.paths) & set(held.paths)
    assert not paths  # no image in both


@pytest.fixture
def tiny_table():
    import jax.numpy as jnp

    from siamax.data import LabelledImages

    labels = np.repeat(np.arange(3), [5, 3, 4])
    return LabelledImages(
        images=jnp.zeros((12, 8, 8), jnp.uint8),
        labels=labels,
        class_names=("a", "b", "c"),
        groups=np.zeros(3, int),
        paths=tuple(f"{i}.png" for i in range(12)),
    )


@pytest.mark.slow
def test_four_classes_of_two_images_train_with_the_defaults(tmp_path, siamax_data_dir, capsys):
    data = _folder(tmp_path / "four", siamax_data_dir, classes=4, images=2)
    assert cli.main(["train", str(data), "--workdir", str(tmp_path / "w"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "validation: the training images themselves" in out and "test: none" in out
    r = json.loads((tmp_path / "w" / "results.json").read_text())
    assert r["data"]["classes_per_part"] == [4, 0, 0] and "verification" not in r
    assert 0.0 < r["training"]["threshold"] < 1.0 and r["training"]["threshold_rule"] == "eer"


@pytest.mark.slow
def test_six_classes_validate_on_held_out_images_and_report_one_schema(tmp_path, siamax_data_dir, capsys):
    data = _folder(tmp_path / "six", siamax_data_dir, classes=6, images=20)
    assert cli.main(["train", str(data), "--workdir", str(tmp_path / "w"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "held-out images of 4 training classes" in out
    r = json.loads((tmp_path / "w" / "results.json").read_text())
    assert r["data"]["classes_per_part"] == [4, 0, 2]
    # The folder path writes the main job's section names for the same measures, raw pixels beside.
    assert {"verification", "random_2way_1shot", "retrieval", "pixels", "training"} <= set(r)
    assert set(r["pixels"]) == {"verification", "random_2way_1shot", "retrieval"}
    v = r["verification"]
    assert v["threshold_from"] == "validation" and v["threshold_rule"] == "eer" and 0.0 < v["threshold"] < 1.0
    assert r["pixels"]["verification"]["threshold_from"] == "validation"
    # The user is told how the model does beside raw pixels on the validation trials, in plain words.
    t = r["training"]
    assert 0.0 <= t["pixels_val_accuracy"] <= 1.0
    assert experiment.versus_pixels(t["best_val_accuracy"], t["pixels_val_accuracy"]) in out


def test_the_user_is_told_plainly_when_the_model_is_not_better_than_pixels():
    assert experiment.versus_pixels(0.9, 0.6) == "validation one-shot: siamax 90.0%, raw pixels 60.0%"
    worse = experiment.versus_pixels(0.5, 0.6)
    assert worse.startswith("validation one-shot: siamax 50.0%, raw pixels 60.0%: the model is NOT better")
    assert "NOT better" in experiment.versus_pixels(0.6, 0.6)  # a tie is not better either


def test_eer_threshold_lies_inside_the_scores_where_the_accuracy_rule_runs_off_the_end():
    # An inverted model on few pairs: the most accurate cut takes all pairs as one kind (a threshold off the scores).
    scores, labels = np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])
    t = metrics.choose_threshold(scores, labels, "accuracy")
    assert t < scores.min() or t > scores.max()
    t = metrics.choose_threshold(scores, labels, "eer")
    assert scores.min() <= t <= scores.max()
    with pytest.raises(ValueError, match="threshold rule"):
        metrics.choose_threshold(scores, labels, "median")
