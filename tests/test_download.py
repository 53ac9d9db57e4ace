"""siamax.data.require and its downloads, against a real HTTP server on 127.0.0.1 serving a copy of shared/data."""

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from siamax import data as D
from siamax import errors
from siamax.data import _paths
from siamax.data import download as dl

pytestmark = pytest.mark.slow  # a real HTTP server and TFDS preparation

SERVED = [
    "omniglot_all_runs_zip",
    "omniglot_background_npz",
    "omniglot_evaluation_npz",
    "mnist_train_images",
    "mnist_train_labels",
    "mnist_test_images",
    "mnist_test_labels",
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test output should not carry a line per request
        pass


@pytest.fixture(scope="module")
def mirror(siamax_data_dir, tmp_path_factory):
    """Base URL of a server of a copy of shared/data; ``base + "/tampered"`` serves all_runs.zip with a byte flipped."""
    root = tmp_path_factory.mktemp("mirror")
    for name in SERVED:
        rel = _paths.ARCHIVES[name].relpath
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(siamax_data_dir / rel, root / rel)
    bad = root / "tampered" / _paths.ARCHIVES["omniglot_all_runs_zip"].relpath
    bad.parent.mkdir(parents=True)
    content = bytearray((siamax_data_dir / _paths.ARCHIVES["omniglot_all_runs_zip"].relpath).read_bytes())
    content[1000] ^= 1
    bad.write_bytes(content)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _direct(monkeypatch):
    """No proxy for 127.0.0.1, and no mirror unless a test sets one."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(_paths.URL_ENV, raising=False)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # independent of siamax's cached hashing


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_require_downloads_verified_files_to_their_paths(mirror, tmp_path, monkeypatch, siamax_data_dir):
    monkeypatch.setenv(_paths.URL_ENV, mirror)
    data = tmp_path / "data"
    data.mkdir()
    out = D.require(["lake_runs", "mnist"], data, tmp_path / "tfds")
    names = _paths.DATASETS["lake_runs"][0] + _paths.DATASETS["mnist"][0]
    assert _files(data) == sorted(_paths.ARCHIVES[n].relpath for n in names)  # nothing else (no temporaries)
    for dataset, paths in out.items():
        assert set(paths) == set(_paths.DATASETS[dataset][0])
        for name, path in paths.items():
            assert path == data / _paths.ARCHIVES[name].relpath and _sha256(path) == _paths.ARCHIVES[name].sha256

    # Offline from now on: present files must not touch the network, whatever the mirror setting.
    def no_network(*args, **kwargs):
        raise AssertionError("network used although every file is present")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv(_paths.URL_ENV, "http://127.0.0.1:1")
    assert D.require(["lake_runs", "mnist"], data, tmp_path / "tfds") == out
    lake = D.lake_runs(data, download=False)
    assert len(lake) == 20 and lake[0].support.shape == (20, 105, 105)
    labels = D.mnist.read_idx(out["mnist"]["mnist_test_labels"])
    assert np.bincount(labels).tolist()[:3] == [980, 1135, 1032]


def test_loaders_download_what_is_missing(mirror, tmp_path, monkeypatch, siamax_data_dir):
    """load_omniglot on an empty data folder and a fresh TFDS folder: the npz files come from the mirror."""
    monkeypatch.setenv(_paths.URL_ENV, mirror)
    data = tmp_path / "data"
    data.mkdir()
    omni = D.load_omniglot(data, tmp_path / "tfds")
    assert _files(data) == sorted(_paths.ARCHIVES[n].relpath for n in _paths.DATASETS["omniglot"][0])
    with np.load(siamax_data_dir / _paths.ARCHIVES["omniglot_evaluation_npz"].relpath) as f:
        assert np.array_equal(omni.images[964:], f["images"])
    # Prepared now: the raw archives are no longer needed, not even their folder.
    shutil.rmtree(data)
    assert D.require(["omniglot"], data, tmp_path / "tfds", download=False) == {"omniglot": {}}
    # The MNIST builder resolves (and downloads) through the same resolver when it prepares.
    builder = D.mnist_builder(tmp_path / "data2", tmp_path / "tfds")
    (tmp_path / "data2").mkdir()
    splits = builder._split_generators(None)
    assert set(splits) == {"train", "test"} and len(_files(tmp_path / "data2")) == 4


def test_default_folder_is_created(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(_paths.DATA_ENV)
    path = D.require("lake_runs", data_url=mirror)["lake_runs"]["omniglot_all_runs_zip"]
    assert path == tmp_path / ".cache/siamax/data" / _paths.ARCHIVES["omniglot_all_runs_zip"].relpath
    assert _sha256(path) == _paths.ARCHIVES["omniglot_all_runs_zip"].sha256


def test_tampered_download_is_refused(mirror, tmp_path, monkeypatch, siamax_data_dir):
    data = tmp_path / "data"
    data.mkdir()
    archive = _paths.ARCHIVES["omniglot_all_runs_zip"]
    tampered = bytearray((siamax_data_dir / archive.relpath).read_bytes())
    tampered[1000] ^= 1
    with pytest.raises(D.ChecksumError) as e:
        D.require("lake_runs", data, data_url=mirror + "/tampered")
    msg = str(e.value)
    assert f"{mirror}/tampered/{archive.relpath}" in msg and "\n" not in msg
    assert archive.sha256 in msg and hashlib.sha256(tampered).hexdigest() in msg
    assert _files(data) == []  # nothing under the real name, no temporary left behind
    assert isinstance(e.value, ValueError)
    monkeypatch.setenv(_paths.URL_ENV, mirror + "/tampered")
    with pytest.raises(D.ChecksumError, match="all_runs.zip"):  # the loader downloads through the same check
        D.lake_runs(data)
    assert _files(data) == []


def test_missing_file_without_download_is_one_line_data_error(tmp_path):
    archive = _paths.ARCHIVES["omniglot_all_runs_zip"]
    with pytest.raises(D.DataError) as e:
        D.require(["lake_runs"], tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / archive.relpath) in msg and archive.sha256 in msg and archive.url in msg
    assert "download=False" in msg and "SIAMAX_DATA_DIR" in msg and "\n" not in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(D.DataError, match="all_runs.zip"):
        D.lake_runs(tmp_path, download=False)  # the loader uses the same resolver


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nowhere"
    for download in (False, True):  # an explicit folder must exist: a typo should not download elsewhere
        with pytest.raises(D.DataError, match="does not exist") as e:
            D.require(["lake_runs"], missing, download=download)
        assert str(missing) in str(e.value) and "\n" not in str(e.value)
    assert not missing.exists()


def test_unreachable_mirror_fails_fast(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    t = time.perf_counter()
    with pytest.raises(D.DataError, match="not reachable") as e:
        D.require(["lake_runs"], tmp_path, data_url=url)
    assert time.perf_counter() - t < 10
    assert url.removeprefix("http://") in str(e.value) and "all_runs.zip" in str(e.value)
    assert _files(tmp_path) == []


def test_offline_lists_the_official_zips_and_the_npz_alternative(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_reachable", lambda host, port: False)
    with pytest.raises(D.DataError, match="github.com:443 is not reachable") as e:
        D.load_omniglot(tmp_path, tmp_path / "tfds")
    msg = str(e.value)
    assert _paths.ARCHIVES["omniglot_evaluation_zip"].url in msg and "images_evaluation.npz" in msg
    assert not any(p.name == "1.0.0" or "incomplete" in p.name for p in (tmp_path / "tfds").rglob("*"))


def test_bad_mirror_url_and_unknown_dataset(tmp_path):
    with pytest.raises(errors.ConfigError, match="not an http"):
        D.require(["lake_runs"], tmp_path, data_url="ftp://example.org/data")
    with pytest.raises(errors.ConfigError, match="unknown dataset"):
        D.require(["omniglott"], tmp_path)


def test_official_urls_and_checksums_are_the_ones_tfds_registers():
    import os

    from tensorflow_datasets.core.download import checksums

    root = os.path.join(os.path.dirname(checksums.__file__), "..", "..", "url_checksums")
    registered = {}
    for name in ("mnist.txt", "omniglot.txt"):
        registered.update(checksums.load_url_infos(os.path.join(root, name)))
    checked = 0
    for archive in _paths.ARCHIVES.values():
        if archive.url in registered:
            info = registered[archive.url]
            assert (int(info.size), info.checksum) == (archive.size, archive.sha256), archive.url
            checked += 1
    assert checked == 8  # the four MNIST files and the four Omniglot zips; all_runs.zip is not registered


def test_every_dataset_archive_is_in_the_table():
    from siamax.data import mnist

    assert {a for alt in _paths.DATASETS["mnist"] for a in alt} == {a for pair in mnist._FILES.values() for a in pair}
    for alternatives in _paths.DATASETS.values():
        assert all(a in _paths.ARCHIVES for alt in alternatives for a in alt)
