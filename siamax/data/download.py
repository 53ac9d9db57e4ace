"""Every raw data file a run will read, present and verified before it starts; downloads of the missing ones.

``resolve(datasets)`` finds each dataset's archives (``_paths.DATASETS``) in the data folder and
checks their sha256 (``siamax.data.require`` calls it before training; the builders when they
prepare). Missing archives are downloaded through TFDS's
download manager (which checks the known size and sha256), from the official sources or from a mirror
(``SIAMAX_DATA_URL``), and renamed into the data folder only once verified, so the next run is
offline and an interrupted download never leaves a partial file under an archive's name. Files that
are present are never re-fetched, and then no network is touched.

Errors (one line each): :class:`~siamax.errors.DataError` for a missing file that cannot be downloaded
(it names the path, the sha256 and the URL) or a data folder that does not exist;
:class:`~siamax.errors.ChecksumError` for a corrupt file, present or downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from siamax.data import _paths
from siamax.errors import ChecksumError, DataError, one_line

ARCHIVES, DATASETS = _paths.ARCHIVES, _paths.DATASETS
REACH_TIMEOUT_S = 3.0  # TFDS retries a dead host for minutes; a TCP connect that fails says so in seconds


def resolve(
    datasets: list[str], data_dir=None, *, download: bool = True, data_url: str | None = None
) -> dict[str, dict[str, Path]]:
    """The raw archives of ``datasets``, verified, downloading the missing ones (what the builders read)."""
    if not datasets:
        return {}
    root = _paths.data_dir(data_dir)
    if not root.is_dir():
        default = root == Path(_paths.DEFAULT_DATA_DIR).expanduser()  # created; another folder is likely a typo
        if not (default and download):
            raise _folder_error(root, datasets, default)
    # Choose each dataset's archives and verify those present before anything is downloaded.
    chosen, base = {}, None
    for name in datasets:
        complete = [alt for alt in DATASETS[name] if all(_path(root, a).is_file() for a in alt)]
        if not complete:
            base = _paths.data_url(data_url)  # only read (and checked) when something is missing
        chosen[name] = complete[0] if complete else _download_set(name, base)
        for a in chosen[name]:
            if _path(root, a).is_file():
                _paths.verify(_path(root, a), a)
    missing = list(dict.fromkeys(a for alt in chosen.values() for a in alt if not _path(root, a).is_file()))
    if missing:
        _fetch(missing, root, base, download, [n for n in datasets if set(chosen[n]) & set(missing)])
    return {n: {a: _path(root, a) for a in alt} for n, alt in chosen.items()}


def _path(root: Path, name: str) -> Path:
    return root / ARCHIVES[name].relpath


def _download_set(dataset: str, base: str | None) -> tuple[str, ...]:
    served = [alt for alt in DATASETS[dataset] if all(_paths.archive_url(a, base) for a in alt)]
    return (served or DATASETS[dataset])[0]


def _fetch(missing: list[str], root: Path, base: str | None, download: bool, datasets: list[str]) -> None:
    """Download ``missing`` into ``root``, or raise the one-line DataError saying why not and how to get them."""
    urls = {a: _paths.archive_url(a, base) for a in missing}
    if not download:
        raise _missing_error(root, urls, "downloads are off (download=False)", datasets)
    if None in urls.values():
        raise _missing_error(root, urls, f"no public URL serves them; set {_paths.URL_ENV} to a mirror", datasets)
    down = [e for e in sorted({_endpoint(u) for u in urls.values()}) if not _reachable(*e)]
    if down:
        hosts = ", ".join(f"{h}:{p}" for h, p in down)
        where = f" (the mirror {base}, {_paths.URL_ENV})" if base else ""
        verb = "is" if len(down) == 1 else "are"
        raise _missing_error(root, urls, f"{hosts}{where} {verb} not reachable", datasets)
    for a, url in urls.items():
        _download(a, url, root)


def _download(name: str, url: str, root: Path) -> None:
    """One archive through TFDS's download manager (given the size and sha256, it verifies them), then
    renamed to its place: the temporary folder is next to the destination, so the rename is atomic."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core.download import checksums, download_manager, util  # pylint: disable=g-import-not-at-top

    archive, dest = ARCHIVES[name], _path(root, name)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent))
    except OSError as e:
        raise DataError(f"cannot write {dest}: {e}; make the data folder writable or set {_paths.DATA_ENV}") from e
    print(f"siamax: downloading {url} ({archive.size / 1e6:.1f} MB) to {dest}", file=sys.stderr, flush=True)
    try:
        info = checksums.UrlInfo(size=archive.size, checksum=archive.sha256, filename=dest.name)
        manager = tfds.download.DownloadManager(download_dir=tmp, url_infos={url: info})
        try:
            got = Path(manager.download(url))
        except download_manager.NonMatchingChecksumError:
            # TFDS leaves the refused file in our temporary folder: name its checksum, then delete it.
            refused = [p for p in tmp.rglob("*") if p.is_file() and not p.name.endswith(".INFO")]
            actual = _paths.sha256(refused[0]) if refused else "unknown"
            raise ChecksumError(
                f"downloaded {url}: sha256 {actual}, expected {archive.sha256}: the download or the server's copy "
                f"is corrupt, so nothing was written to {dest}. Try again, or fix the mirror ({_paths.URL_ENV})"
            ) from None
        except (OSError, util.DownloadError) as e:
            raise DataError(
                f"downloading {url} to {dest} failed: {one_line(e)}. Try again, or put the file there yourself (sha256 "
                f"{archive.sha256}), or set {_paths.DATA_ENV} to a folder laid out like the project's shared/data"
            ) from e
        _paths.verify(got, name)  # TFDS compared while downloading; this re-reads the very file we keep
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _endpoint(url: str) -> tuple[str, int]:
    """The host:port a download of ``url`` connects to first: its proxy's, if one applies."""
    parts = urllib.parse.urlsplit(url)
    proxy = None if urllib.request.proxy_bypass(parts.hostname) else urllib.request.getproxies().get(parts.scheme)
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(host: str, port: int, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing_error(root: Path, urls: dict[str, str | None], why: str, datasets: list[str]) -> DataError:
    files = "; ".join(
        f"{_path(root, a)} (sha256 {ARCHIVES[a].sha256}, from {url or 'a mirror'})" for a, url in urls.items()
    )
    others = {
        n: [ARCHIVES[a].relpath for alt in DATASETS[n] if not set(alt) & set(urls) for a in alt] for n in datasets
    }
    instead = "".join(f" ({n} can be read from these instead: {', '.join(p)})" for n, p in others.items() if p)
    return DataError(
        f"missing data file{'s' if len(urls) > 1 else ''}: {files}. Cannot download: {why}. Download each URL to "
        f"its path{instead}, or set {_paths.DATA_ENV} (or data_dir=) to a folder laid out like the project's "
        "shared/data"
    )


def _folder_error(root: Path, datasets: list[str], default: bool) -> DataError:
    what = "does not exist" if not root.exists() else "is not a folder"
    setting = f"the default; {_paths.DATA_ENV} is not set" if default else f"from {_paths.DATA_ENV} or data_dir="
    needed = ", ".join(ARCHIVES[a].relpath for n in datasets for a in DATASETS[n][0])
    return DataError(
        f"siamax data folder {root} ({setting}) {what}. Set {_paths.DATA_ENV} (or data_dir=) to a folder laid out "
        f"like the project's shared/data (needed here: {needed}), or create the folder to download into it"
    )
