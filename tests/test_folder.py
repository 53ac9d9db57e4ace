"""siamax.data.image_folder and class_splits on real images: Omniglot's official PNG tree, MNIST digits
written as PNG / JPEG class folders, every supported file format, and the folders users get wrong."""

import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamax.data import ClassSplits, class_splits, image_folder, load_class_splits, require_classes
from siamax.data.labelled import model_format
from siamax.errors import DataError, InputError

SMALL1 = "omniglot/brendenlake-omniglot/python/images_background_small1.zip"
_NAME = re.compile(r"(\d{4})_(\d{2})\.png$")


def _flat_index(path: str) -> int:
    char_id, drawer = map(int, _NAME.search(path).groups())
    return (char_id - 1) * 20 + drawer - 1


@pytest.fixture(scope="module")
def small1(siamax_data_dir, tmp_path_factory):
    """The official images_background_small1.zip unpacked: 5 alphabets x their characters x 20 PNGs."""
    root = tmp_path_factory.mktemp("small1")
    with zipfile.ZipFile(siamax_data_dir / SMALL1) as zf:
        zf.extractall(root)
    return root / "images_background_small1"


@pytest.fixture(scope="module")
def small1_table(small1):
    return image_folder(small1, size=105)


@pytest.fixture(scope="module")
def digits(mnist):
    """12 test images of each digit: (images uint8 (120, 28, 28), labels)."""
    index = np.concatenate([np.flatnonzero(mnist.test_labels == d)[:12] for d in range(10)])
    return mnist.test_images[index], mnist.test_labels[index]


def _write_digits(root, digits, fmt="png"):
    images, labels = digits
    for i, (x, y) in enumerate(zip(images, labels)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            Image.fromarray(x).save(root / str(y) / f"{i:05d}.png")
        else:
            Image.fromarray(np.stack([x] * 3, -1)).save(root / str(y) / f"{i:05d}.jpg", quality=95)
    return root


# ---------------------------------------------------------------------------------------------
# Real trees.


@pytest.mark.slow
def test_omniglot_tree_groups_classes_and_pixels(small1_table, omniglot):
    table, report = small1_table
    assert report.layout == "groups" and report.ink == "dark" and report.ink_detected and report.paper == 1.0
    assert not report.skipped and not report.ink_outliers and report.n_shapes == 1 and report.n_reduced == 0
    assert table.group_names == ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")
    assert (table.n_images, table.n_classes, table.size, table.name) == (2720, 136, 105, "images_background_small1")
    assert table.class_names[0] == "Balinese/character01" and table.class_names[-1] == "Latin/character26"
    assert np.array_equal(table.class_counts(), np.full(136, 20))
    for c, name in enumerate(table.class_names):  # each class in its alphabet, its files in its folder
        assert table.group_names[table.groups[c]] == name.split("/")[0]
    assert all(p.startswith(table.class_names[c] + "/") for p, c in zip(table.paths, table.labels))
    assert table.paths[:2] == ("Balinese/character01/0108_01.png", "Balinese/character01/0108_02.png")
    # The pixels are the Omniglot npz's, by the id and drawer in each file name: ink (False) -> 255.
    native = omniglot.flat_images[[_flat_index(p) for p in table.paths]]
    assert np.array_equal(np.asarray(table.images), np.where(native, 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_omniglot_tree_at_35_is_model_format(small1, omniglot):
    greek = small1.parent / "greek_only"
    shutil.copytree(small1 / "Greek", greek / "Greek")
    table, report = image_folder(greek, size="small")  # a model name: its input size, 35
    assert table.size == 35 and table.n_classes == 24 and table.group_names == ("Greek",)
    native = omniglot.flat_images[[_flat_index(p) for p in table.paths]]
    assert np.array_equal(np.asarray(table.images), np.asarray(model_format("small", native, "dark")))


@pytest.mark.slow
def test_mnist_png_class_folders_light_ink(tmp_path, digits):
    root = _write_digits(tmp_path / "digits", digits)
    table, report = image_folder(root, size=28)
    assert report.layout == "classes" and report.ink == "light" and report.ink_detected and report.paper < 0.1
    assert table.class_names == tuple("0123456789") and table.group_names == ("all",)
    assert np.array_equal(table.groups, np.zeros(10))
    images, labels = digits
    assert np.array_equal(table.labels, labels)  # class i is folder "i", files in written order
    assert np.array_equal(np.asarray(table.images), images)  # 28 -> 28: MNIST's own pixels


@pytest.mark.slow
def test_mnist_rgb_jpeg_is_close(tmp_path, digits):
    root = _write_digits(tmp_path / "digits_jpg", digits, fmt="jpg")
    table, report = image_folder(root, size=28)
    assert report.ink == "light" and table.n_images == 120
    error = np.abs(np.asarray(table.images, np.float32) - digits[0])
    assert error.mean() < 3 and error.mean(axis=(1, 2)).max() < 8  # lossy, but the same digits


@pytest.mark.slow
def test_every_format_and_large_photos(tmp_path, omniglot):
    native = omniglot.flat_images[[0, 1]]  # bool, True = paper
    root = tmp_path / "formats"
    gray = np.where(native, 255, 0).astype(np.uint8)
    writers = {
        "png_1bit": lambda x, i, p: Image.fromarray(x).convert("1").save(p / f"{i}.png"),
        "png_16bit": lambda x, i, p: Image.fromarray(x.astype(np.uint16) * 257).save(p / f"{i}.png"),
        "png_rgba": lambda x, i, p: Image.fromarray(_rgba(x)).save(p / f"{i}.png"),
        "gif_palette": lambda x, i, p: Image.fromarray(x).convert("P").save(p / f"{i}.gif"),
        "bmp": lambda x, i, p: Image.fromarray(x).save(p / f"{i}.BMP"),
        "tiff": lambda x, i, p: Image.fromarray(x).save(p / f"{i}.tiff"),
        "jpeg_gray": lambda x, i, p: Image.fromarray(x).save(p / f"{i}.jpeg", quality=100),
        "jpeg_exif_rotated": lambda x, i, p: Image.fromarray(np.rot90(x)).save(
            p / f"{i}.jpg", quality=100, exif=_EXIF_6
        ),
        "png_large": lambda x, i, p: Image.fromarray(np.kron(x, np.ones((8, 8), np.uint8))).save(p / f"{i}.png"),
    }
    for name, write in writers.items():
        (root / name).mkdir(parents=True)
        for i, x in enumerate(gray):
            write(x, i, root / name)
    assert (
        Image.open(root / "png_16bit" / "0.png").mode == "I;16"
        and Image.open(root / "png_rgba" / "0.png").mode == "RGBA"
    )
    table, report = image_folder(root, size=105)
    assert report.ink == "dark" and report.ink_detected and not report.skipped and report.n_reduced == 2
    expected = np.where(native, 0, 255).astype(np.uint8)
    for c, name in enumerate(table.class_names):
        got = np.asarray(table.images)[table.labels == c]
        if name in ("jpeg_gray", "jpeg_exif_rotated"):  # stored turned left, orientation 6: shown upright
            assert np.abs(got.astype(np.float32) - expected).mean() < 3
        elif name == "png_large":
            # 840 px: box-reduced by 2 to 420 = 4 x 105, exactly the 4x upscaled image, then preprocess.
            big = np.kron(native, np.ones((4, 4), bool))
            assert np.array_equal(got, np.asarray(model_format("paper", big, "dark")))
        else:
            assert np.array_equal(got, expected), name


_EXIF_6 = Image.Exif()
_EXIF_6[0x0112] = 6  # orientation: turn the stored image 90 degrees clockwise to show it


def _rgba(gray):
    """Black ink on transparent paper, random colour under the transparency (it must not matter)."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (*gray.shape, 4), dtype=np.uint8)
    ink = gray == 0
    rgba[ink, :3] = 0
    rgba[..., 3] = np.where(ink, 255, 0)
    return rgba


# ---------------------------------------------------------------------------------------------
# Folders users get wrong.


def _image(path, value=255, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.full((size, size), value, np.uint8)
    x[2:5, 2:5] = 255 - value
    Image.fromarray(x).save(path)


def test_missing_empty_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        image_folder(tmp_path / "nope", size=28)
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="it is empty"):
        image_folder(tmp_path / "empty", size=28)
    (tmp_path / "empty" / ".hidden").mkdir()  # hidden folders do not count
    with pytest.raises(InputError, match="it is empty"):
        image_folder(tmp_path / "empty", size=28)
    _image(tmp_path / "loose" / "a.png")
    with pytest.raises(DataError, match="is a file, not a folder"):
        image_folder(tmp_path / "loose" / "a.png", size=28)
    with pytest.raises(InputError, match=r"holds 1 image\(s\) directly \(a.png\) and no class folders"):
        image_folder(tmp_path / "loose", size=28)


def test_class_with_one_image_and_galleries(tmp_path):
    for name, n in (("10", 2), ("2", 2), ("lonely", 1)):
        for i in range(n):
            _image(tmp_path / "g" / name / f"{i}.png")
    with pytest.raises(ValueError, match=r"lonely \(1\).*positive pair.*min_images=1") as e:
        image_folder(tmp_path / "g", size=8)
    assert "\n" not in str(e.value)
    table, report = image_folder(tmp_path / "g", size=8, min_images=1)
    assert table.class_names == ("2", "10", "lonely")  # natural order
    assert np.array_equal(table.class_counts(), [2, 2, 1]) and report.ink == "dark"


def test_unreadable_files_are_listed_and_skipped(tmp_path):
    root = tmp_path / "f"
    for c in "ab":
        for i in range(2):
            _image(root / c / f"{i}.png")
    (root / "a" / "notes.txt").write_text("not a picture")
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not reported
    (root / ".thumbnails").mkdir()
    (root / "README.md").write_text("my characters")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported in the FolderReport, not warned: the command prints it once
        table, report = image_folder(root, size=8)
    assert "skipped 3 file(s)" in report.summary()
    assert table.n_images == 4 and table.class_names == ("a", "b")
    skipped = dict(report.skipped)
    assert set(skipped) == {"README.md", "a/notes.txt", "b/truncated.png"}
    assert "not an image file" in skipped["a/notes.txt"] and "cannot be read" in skipped["b/truncated.png"]
    assert "b/truncated.png" in report.summary()
    (root / "b" / "1.png").unlink()  # now b has one readable image: the error names what was skipped there
    with pytest.raises(InputError, match=r"b \(1\) \(skipped there: b/truncated.png\)"):
        image_folder(root, size=8)


def test_link_loops_and_dangling_links_are_skipped_and_named(tmp_path, monkeypatch):
    root = tmp_path / "f"
    for c in "ab":
        for i in range(2):
            _image(root / c / f"{i}.png")
    (root / "a" / "loop.png").symlink_to("loop.png")  # a link to itself: stat fails with ELOOP
    (root / "b" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "top").symlink_to("top")
    table, report = image_folder(root, size=8)
    assert table.n_images == 4 and table.class_names == ("a", "b")
    skipped = dict(report.skipped)
    assert skipped["top"] == skipped["a/loop.png"] == "a symbolic link that loops back on itself"
    assert "b/gone.png" in skipped and "does not exist" in skipped["b/gone.png"]
    assert "a/loop.png (a symbolic link that loops back on itself)" in report.summary()
    # The same in the group layout, a class folder that is a loop, and a tree of nothing else.
    for c in ("x", "y"):
        _image(tmp_path / "g" / "alpha" / c / "0.png")
        _image(tmp_path / "g" / "alpha" / c / "1.png")
    (tmp_path / "g" / "alpha" / "x" / "2.png").symlink_to("2.png")
    (tmp_path / "g" / "alpha" / "z").symlink_to("z")
    table, report = image_folder(tmp_path / "g", size=8)
    assert table.class_names == ("alpha/x", "alpha/y") and {p for p, _ in report.skipped} == {
        "alpha/x/2.png",
        "alpha/z",
    }
    (tmp_path / "only_loops").mkdir()
    (tmp_path / "only_loops" / "l").symlink_to("l")
    with pytest.raises(InputError, match=r"holds no class folders \(only l\)"):
        image_folder(tmp_path / "only_loops", size=8)
    # A folder that cannot be listed (e.g. no permission): a plain error naming it.
    scandir = os.scandir

    def refuse_b(path):
        if Path(path) == root / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_b)
    with pytest.raises(InputError, match=r"cannot list the folder .*/f/b: Permission denied"):
        image_folder(root, size=8)
    monkeypatch.undo()
    # The folder itself a link that loops: a plain error naming it.
    (tmp_path / "itself").symlink_to("itself")
    with pytest.raises(DataError, match="itself is a symbolic link that loops or leads nowhere"):
        image_folder(tmp_path / "itself", size=8)


def test_images_of_the_other_polarity_are_named(tmp_path):
    for i in range(3):
        _image(tmp_path / "f" / "c" / f"{i}.png", value=255)  # dark ink on white
    _image(tmp_path / "f" / "c" / "negative.png", value=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, report = image_folder(tmp_path / "f", size=8)
    assert "1 image(s) look like the opposite polarity: c/negative.png" in report.summary()
    assert report.ink == "dark" and report.ink_outliers == ("c/negative.png",) and table.n_images == 4


def test_trees_in_no_layout(tmp_path):
    _image(tmp_path / "deep" / "g" / "c" / "sub" / "0.png")
    _image(tmp_path / "deep" / "g" / "c" / "0.png")
    with pytest.raises(InputError, match="holds both images and folders"):
        image_folder(tmp_path / "deep" / "g", size=8)
    with pytest.raises(InputError, match="nested deeper than DIR/<group>/<class>/<image>"):
        image_folder(tmp_path / "deep", size=8)
    _image(tmp_path / "mixed" / "cls" / "0.png")
    _image(tmp_path / "mixed" / "grp" / "cls" / "0.png")
    with pytest.raises(InputError, match="mixes layouts"):
        image_folder(tmp_path / "mixed", size=8)
    _image(tmp_path / "mixed" / "loose.png")
    with pytest.raises(InputError, match="directly .loose.png. next to folders"):
        image_folder(tmp_path / "mixed", size=8)
    _image(tmp_path / "grouped" / "g" / "c" / "0.png")
    with pytest.raises(InputError, match="pass layout='groups'"):
        image_folder(tmp_path / "grouped", size=8, layout="classes")
    _image(tmp_path / "flat" / "c" / "0.png")
    with pytest.raises(InputError, match="pass layout='classes'"):
        image_folder(tmp_path / "flat", size=8, layout="groups")


def test_bad_arguments_and_unclear_polarity(tmp_path):
    for i in range(2):
        _image(tmp_path / "grey" / "c" / f"{i}.png", value=128)
    with pytest.raises(InputError, match="cannot tell the ink polarity.*pass ink='dark'"):
        image_folder(tmp_path / "grey", size=8)
    table, report = image_folder(tmp_path / "grey", size=8, ink="light")
    assert report.ink == "light" and not report.ink_detected and not report.ink_outliers
    for kwargs, match in (
        ({"layout": "tree"}, "layout must be"),
        ({"ink": "black"}, "ink must be"),
        ({"min_images": 0}, "min_images"),
        ({"size": 0}, "size must be"),
        ({"size": None}, "size must be"),
    ):
        with pytest.raises(InputError, match=match):
            image_folder(tmp_path / "grey", **{"size": 8, **kwargs})


# ---------------------------------------------------------------------------------------------
# Class splits.


@pytest.mark.slow
def test_class_splits_disjoint_and_seeded(small1_table):
    table, _ = small1_table
    splits = class_splits(table, (0.7, 0.15, 0.15), seed=3)
    names = [set(t.class_names) for t in splits.parts()]
    assert [len(n) for n in names] == [95, 21, 20]  # largest remainder of 136 x fractions
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == set(table.class_names)
    for part in splits.parts():  # whole classes: every image of a class goes with it
        assert np.array_equal(part.class_counts(), np.full(part.n_classes, 20))
    assert splits.test.name == "images_background_small1/test"
    again = class_splits(table, (0.7, 0.15, 0.15), seed=3)
    assert [t.class_names for t in again.parts()] == [t.class_names for t in splits.parts()]
    other = class_splits(table, (0.7, 0.15, 0.15), seed=4)
    assert other.test.class_names != splits.test.class_names
    by_group = class_splits(table, (0.6, 0.2, 0.2), seed=0, by="group")
    groups = [set(t.group_names) for t in by_group.parts()]
    assert [len(g) for g in groups] == [3, 1, 1] and set().union(*groups) == set(table.group_names)
    no_validation = class_splits(table, (0.8, 0, 0.2))
    assert no_validation.validation.n_images == 0 and no_validation.train.n_classes == 109


@pytest.mark.slow
def test_class_splits_refuse_impossible_fractions(small1_table):
    table, _ = small1_table
    for fractions in ((0.5, 0.5, 0.5), (0.7, 0.3), (-0.1, 0.6, 0.5), (0, 0.5, 0.5), "abc"):
        with pytest.raises(InputError, match="fractions must be"):
            class_splits(table, fractions)
    three = table.of_classes([0, 1, 2])
    with pytest.raises(InputError, match="3 class.*too few.*test part"):
        class_splits(three, (0.9, 0.05, 0.05))
    with pytest.raises(InputError, match="1 group.*too few"):
        class_splits(three, by="group")
    with pytest.raises(ValueError, match="20-way"):
        require_classes(three, 20, "a 20-way task")


@pytest.mark.slow
def test_manifest_round_trip_and_changed_folder(tmp_path, digits):
    root = _write_digits(tmp_path / "digits", digits)
    table, _ = image_folder(root, size=28)
    manifest = tmp_path / "runs" / "splits.json"
    splits = class_splits(table, (0.6, 0.2, 0.2), seed=1, manifest=manifest)
    saved = json.loads(manifest.read_text())
    assert saved["seed"] == 1 and saved["folder"] == "digits" and saved["fingerprint"].startswith("sha256:")
    assert {p: saved["classes"][p] for p in ("train", "validation", "test")} == {
        "train": list(splits.train.class_names),
        "validation": list(splits.validation.class_names),
        "test": list(splits.test.class_names),
    }
    loaded = load_class_splits(manifest, table)
    assert isinstance(loaded, ClassSplits) and loaded.fractions == (0.6, 0.2, 0.2)
    assert [t.class_names for t in loaded.parts()] == [t.class_names for t in splits.parts()]
    assert np.array_equal(np.asarray(loaded.test.images), np.asarray(splits.test.images))
    # A rerun reads the manifest back; asking for another draw of it is an error, not a silent resplit.
    rerun = class_splits(table, (0.6, 0.2, 0.2), seed=1, manifest=manifest)
    assert rerun.test.class_names == splits.test.class_names
    with pytest.raises(InputError, match="holds a split drawn with"):
        class_splits(table, (0.6, 0.2, 0.2), seed=2, manifest=manifest)
    # The folder changes: a new class, a file gone.
    shutil.copytree(root / "3", root / "three")
    next(iter(sorted((root / "5").iterdir()))).unlink()
    changed, _ = image_folder(root, size=28)
    with pytest.raises(InputError, match=r"different file list.*classes added: three; 120 images then, 131 now"):
        class_splits(changed, (0.6, 0.2, 0.2), seed=1, manifest=manifest)
    with pytest.raises(DataError, match="does not exist"):
        load_class_splits(tmp_path / "none.json", table)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable class-split manifest"):
        load_class_splits(tmp_path / "bad.json", table)


# Four colours of exactly equal BT.601 luma (299 R + 587 G + 114 B = 125,340): gray, they are one.
EQUAL_LUMA = np.array([[245, 73, 81], [9, 207, 10], [104, 112, 250], [246, 42, 238]], np.uint8)


def test_colour_is_detected_and_can_be_overridden(tmp_path):
    colour, gray = tmp_path / "colour", tmp_path / "gray"
    for c, rgb in enumerate(EQUAL_LUMA[:2]):
        for root in (colour, gray):
            (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            img = np.zeros((12, 12, 3), np.uint8)
            img[3:9, 3 + i : 9] = rgb
            Image.fromarray(img).save(colour / f"c{c}" / f"{i}.png")
            Image.fromarray(np.repeat(img[..., :1], 3, axis=-1)).save(gray / f"c{c}" / f"{i}.png")  # RGB, R = G = B
    table, report = image_folder(colour, size=12, ink="light")
    assert table.images.shape == (4, 12, 12, 3) and table.channels == 3
    assert (report.color, report.color_detected, report.n_colour) == ("rgb", True, 4)
    assert "rgb (detected: 4 of 4 images have colour)" in report.summary()
    np.testing.assert_array_equal(np.asarray(table.images)[0, 5, 5], EQUAL_LUMA[0])  # light ink: kept as it is
    table, report = image_folder(colour, size=12, ink="light", color="gray")
    assert table.images.shape == (4, 12, 12) and report.color == "gray" and not report.color_detected
    assert len(np.unique(np.asarray(table.images)[:, 5, 5])) == 1  # equal luma: one gray
    table, report = image_folder(gray, size=12, ink="light")
    assert table.images.shape == (4, 12, 12) and (report.color, report.n_colour) == ("gray", 0)
    table, report = image_folder(gray, size=12, ink="light", color="rgb")
    assert table.images.shape == (4, 12, 12, 3)
    # A model decides under "auto": a gray one converts colour (as before), an RGB one keeps it.
    _, report = image_folder(colour, size="tiny", ink="light")
    assert report.color == "gray" and report.n_colour == 4 and "converted to gray" in report.summary()
    from siamax.model import MODELS

    table, _ = image_folder(colour, size=MODELS["tiny"].replace(channels=3), ink="light")
    assert table.images.shape == (4, 28, 28, 3)
    with pytest.raises(InputError, match="the model is a gray one"):
        image_folder(colour, size="tiny", ink="light", color="rgb")
    with pytest.raises(InputError, match="color must be one of"):
        image_folder(colour, size=12, color="colour")
