"""The `siamax` command on the other kinds of folder a user has: face photos (ORL's PGMs as they are),
sound clips (FSDD's WAVs, DIR/<digit>/<clip>) and colour images. Each trains with the default preset
chosen for what the folder holds (said on the first line), then `evaluate`, `verify` and `identify`
read new files as in training (the model's metadata: modality, channels, audio front-end), and files
of the other kind are refused with one error line."""

import json
from pathlib import Path

import numpy as np
import pytest

from siamax import cli, commands, presets
from siamax.data import adapters

# The machinery, not the accuracy, is under test: a tiny network and schedule on top of the default preset.
TINY = ["--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--val-trials", "20"]
TINY += ["--verification-pairs", "100", "--no-progress"]


def _refused(capsys, *argv) -> str:
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _link_tree(root: Path, classes: dict[str, list[Path]]) -> Path:
    for name, files in classes.items():
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory, siamax_data_dir):
    """ORL's PGMs as they are: 8 people to train on, 4 others to evaluate on."""
    orl = siamax_data_dir / "orl_faces"
    if not orl.is_dir():
        pytest.skip(f"no ORL faces at {orl}")
    base = tmp_path_factory.mktemp("faces")
    people = {f"s{i}": sorted((orl / f"s{i}").glob("*.pgm")) for i in range(3, 15)}
    train = _link_tree(base / "train", {k: v for k, v in people.items() if int(k[1:]) < 11})
    new = _link_tree(base / "new", {k: v for k, v in people.items() if int(k[1:]) >= 11})
    return train, new


@pytest.fixture(scope="module")
def clips(tmp_path_factory, siamax_data_dir):
    """FSDD: digits 0-7, 10 clips each, to train on; digits 8 and 9 to evaluate on."""
    recordings = siamax_data_dir / "fsdd" / "recordings"
    if not recordings.is_dir():
        pytest.skip(f"no FSDD recordings at {recordings}")
    base = tmp_path_factory.mktemp("clips")
    digits = {
        str(d): [recordings / f"{d}_{s}_{i}.wav" for s in ("george", "jackson") for i in range(5)] for d in range(10)
    }
    train = _link_tree(base / "train", {d: f for d, f in digits.items() if int(d) < 8})
    new = _link_tree(base / "new", {d: f for d, f in digits.items() if int(d) >= 8})
    return train, new


def _colour_folder(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``classes`` folders of 24 x 24 PNGs of noise around one colour per class (the same brightness)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    hues = np.eye(3)[np.arange(classes) % 3] * 160 + 40 + 20 * (np.arange(classes) // 3)[:, None]
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            x = np.clip(hues[c] + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(x).save(root / f"c{c}" / f"{i}.png")
    return root


def _train(tmp_path_factory, data, capsys, *extra) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("run")
    capsys.readouterr()
    assert cli.main(["train", str(data), "--workdir", str(workdir), *TINY, *extra]) == 0
    return workdir, capsys.readouterr().out


def test_the_modality_preset_is_chosen_in_one_place():
    assert presets.default_preset(presets.folder_task("ink")) == "folder"
    assert presets.default_preset(presets.folder_task("photos")) == "faces"
    assert presets.default_preset(presets.folder_task("audio")) in presets.PRESETS
    assert set(presets.FOLDER_TASKS) == set(adapters.MODALITIES)


def test_colour_and_ink_are_told_from_the_folder(tmp_path):
    from PIL import Image

    kind = adapters.folder_kind(_colour_folder(tmp_path / "colour"))
    assert (kind.modality, kind.color) == ("photos", "rgb") and "colour photos" in kind.describe()
    assert adapters.folder_kind(tmp_path / "colour", color="gray").color == "gray"
    ink = tmp_path / "ink"
    for c in range(2):
        (ink / f"c{c}").mkdir(parents=True)
        for i in range(2):
            x = np.full((30, 30), 255, np.uint8)
            x[5:25, 10 + c * 5 + i] = 0  # a dark stroke on white paper
            Image.fromarray(x).save(ink / f"c{c}" / f"{i}.png")
    assert adapters.folder_kind(ink).modality == "ink"


@pytest.mark.slow
def test_face_photos_train_with_the_faces_preset_then_evaluate_and_verify(faces, tmp_path_factory, tmp_path, capsys):
    train, new = faces
    workdir, out = _train(tmp_path_factory, train, capsys)
    assert "no --preset given: using 'faces' for a folder of gray photos" in out
    model = commands.load_model(workdir)
    assert model.modality == "photos" and model.params.spec.channels == 1 and model.params.spec.input_size == 48
    args = ["evaluate", str(workdir), str(new), "--out", str(tmp_path / "e"), "--no-plots", "--no-progress"]
    assert cli.main([*args, "--n-way", "4", "--trials", "40", "--pairs", "100"]) == 0
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["data"]["classes"] == 4
    capsys.readouterr()
    assert cli.main(["verify", str(workdir), str(new / "s11" / "1.pgm"), str(new / "s11" / "2.pgm"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0.0 <= r["probability"] <= 1.0 and r["threshold"] == model.threshold


@pytest.mark.slow
def test_audio_clips_train_with_the_audio_preset_then_evaluate_verify_and_refuse_images(
    clips, faces, tmp_path_factory, tmp_path, capsys
):
    train, new = clips
    workdir, out = _train(tmp_path_factory, train, capsys)
    preset = presets.default_preset(presets.folder_task("audio"))
    assert f"no --preset given: using {preset!r} for a folder of audio clips" in out and "clips of 8 classes" in out
    model = commands.load_model(workdir)
    assert model.modality == "audio" and model.mel.shape == (model.params.spec.input_size,) * 2
    args = ["evaluate", str(workdir), str(new), "--n-way", "2", "--trials", "20", "--pairs", "50"]
    assert cli.main([*args, "--out", str(tmp_path / "e"), "--no-plots", "--no-progress"]) == 0
    a, b, c = (new / "8" / "8_george_0.wav", new / "8" / "8_george_1.wav", new / "9" / "9_george_0.wav")
    capsys.readouterr()
    assert cli.main(["verify", str(workdir), str(a), str(b), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["probability"] <= 1.0
    assert cli.main(["identify", str(workdir), str(new), str(c), "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["matches"]) == 2

    # Files of the other kind: one error line, exit status 2, for every command and both ways round.
    face_train, face_new = faces
    image = face_new / "s11" / "1.pgm"
    assert "the model was trained on audio clips" in _refused(capsys, "verify", str(workdir), str(a), str(image))
    line = _refused(capsys, "evaluate", str(workdir), str(face_new), "--out", str(tmp_path / "x"), "--no-plots")
    assert "holds images, but the model was trained on audio clips" in line
    assert "trained on audio" in _refused(capsys, "identify", str(workdir), str(new), str(image))
    line = _refused(capsys, "index", "build", str(workdir), str(face_new), str(tmp_path / "idx"))
    assert "trained on audio" in line
    line = _refused(capsys, "train", str(train), "--workdir", str(tmp_path / "w"), "--color", "rgb", *TINY)
    assert "--color rgb is for images" in line
    photo_model = commands.load_model(commands.checkpoint.export(model.params, tmp_path / "m", {"modality": "photos"}))
    assert photo_model.modality == "photos"
    line = _refused(capsys, "verify", str(tmp_path / "m"), str(image), str(a))
    assert "is audio, but the model was trained on images (photos)" in line


@pytest.mark.slow
def test_a_colour_folder_trains_an_rgb_model_that_verifies_and_identifies(tmp_path_factory, tmp_path, capsys):
    data = _colour_folder(tmp_path / "colour", classes=8, per_class=8)
    workdir, out = _train(tmp_path_factory, data, capsys)
    assert "using 'faces' for a folder of colour photos" in out and "rgb (64 of 64 images have colour)" in out
    assert "ink 'light' (photos keep their stored values)" in out  # neither given nor read off the borders
    model = commands.load_model(workdir)
    assert model.params.spec.channels == 3 and model.modality == "photos"
    capsys.readouterr()
    assert cli.main(["verify", str(workdir), str(data / "c0" / "0.png"), str(data / "c0" / "1.png"), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["probability"] <= 1.0
    queries = [str(data / "c1" / "3.png"), str(data / "c2" / "3.png")]
    assert cli.main(["identify", str(workdir), str(data), *queries, "-k", "3", "--json"]) == 0
    assert [len(r["matches"]) for r in json.loads(capsys.readouterr().out)] == [3, 3]
    assert cli.main(["index", "build", str(workdir), str(data), str(tmp_path / "idx")]) == 0
    # --color gray makes a gray model of the same folder; contradicting --channels is refused.
    line = _refused(capsys, "train", str(data), "--workdir", str(tmp_path / "w"), "--color", "gray", "--channels", "3")
    assert "--color gray asks for 1 channel(s), --channels 3" in line
