"""Download a dataset from its publisher, check its SHA-256, unpack it safely and write its meta.json.

    python -m training.download --dataset mvtec visa btad --root data/
    python -m training.download --dataset mvtec --root data/ --mirror https://my.mirror/files --checksums SHA256SUMS

The files and checksums come from `training/datasets.py`. An interrupted download resumes with an HTTP
Range request (a server that answers 200 instead of 206 is restarted from zero); a wrong checksum sets the
file aside as `<name>.sha256-mismatch` and stops. Archives are unpacked by `wmoe.archives` (no member
outside the root, no links or devices, byte budgets) into `ROOT/<dataset>/`, then `prepare_data` writes
`meta.json`. The archives stay in `ROOT/downloads/` (delete them to reclaim the space). Datasets behind a
login or a form get a message saying where to fetch them and the layout `prepare_data` expects.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import inspect
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from training.datasets import DATASETS, Dataset, Remote
from training.prepare_data import LOADERS, prepare
from wmoe.archives import extract
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError

DOWNLOADS = "downloads"  # under --root: the archives as fetched
TIMEOUT_S = 30.0  # connect and per-read timeout
ATTEMPTS = 5  # a dropped connection is resumed this many times before giving up
CHUNK = 1 << 20


class DownloadError(WMoEError, RuntimeError):
    """A file that could not be fetched (unreachable host, HTTP error, too many dropped connections)."""


class ChecksumError(DownloadError):
    """A fetched file whose SHA-256 is not the published one (it is set aside, never unpacked)."""


class ManualDownloadError(DownloadError):
    """A dataset behind a login or a form: the message says where to get it and the layout to unpack."""


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """`sha256sum` output (`<hex>  <name>` or `<hex> *<name>` per line) as {file name: hex}."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DownloadError(
            f"{Path(path).name}: cannot read the checksum file ({getattr(e, 'strerror', None) or type(e).__name__})"
        ) from None
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise DownloadError(f"{Path(path).name}:{n}: expected '<sha256 hex>  <file name>', got {line!r}")
        out[Path(name).name] = digest.lower()
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bar(name: str, total: int | None, initial: int, progress: bool, say: Callable[[str], None]):
    """A byte progress bar on a terminal; elsewhere (logs, CI) one line at the start instead of a bar."""
    live = progress and sys.stderr.isatty()
    if progress and not live:
        size = f" ({total / 1e6:,.1f} MB)" if total else ""
        say(f"downloading {name}{size}" + (f", resuming at {initial / 1e6:,.1f} MB" if initial else ""))
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not live,
    )


def fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Fetch `url` to `dest` (skipped when `dest` exists with the right checksum), resuming `dest.part`.

    A connection that cannot be opened fails at once (offline, unknown host, refused); a connection that
    drops while reading is resumed from the bytes already on disk, up to ATTEMPTS times.
    """
    host = urllib.parse.urlsplit(url).netloc or url
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problem = ""
    for _ in range(ATTEMPTS):
        have = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "wmoe-clip-download"} | ({"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the partial file is complete
                break
            raise DownloadError(f"{dest.name}: {host} answered HTTP {e.code} {e.reason}") from None
        except ValueError:
            raise DownloadError(f"{dest.name}: {url!r} is not a URL this tool can fetch") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(
                f"{dest.name}: cannot reach {host} ({reason}); check the network, or use --mirror"
            ) from None
        with response:
            resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-"
            )
            if response.status == 206 and not resumed:  # another range than asked for: ask for it all
                part.unlink(missing_ok=True)
                problem = f"asked for bytes {have}- and got {response.headers.get('Content-Range')!r}"
                continue
            if have and not resumed:
                have = 0  # the server ignored the Range header (a 200 with the whole file): start again
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            try:
                with (
                    open(part, "ab" if have else "wb") as f,
                    _bar(dest.name, total, have, progress, say) as bar,
                ):
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:  # dropped midway: resume
                problem = f"{type(e).__name__}: {e}"
                time.sleep(0.5)
                continue
        size = part.stat().st_size
        if total is None or size == total:
            break
        problem = f"the connection closed after {size:,} of {total:,} bytes"
    else:
        raise DownloadError(
            f"{dest.name}: gave up after {ATTEMPTS} attempts ({problem}); run again to resume"
        )
    got = sha256_of(part)
    if sha256 is None:
        say(f"{dest.name}: no published SHA-256 is known; computed {got} (pin it with --checksums)")
    elif got != sha256:
        aside = dest.with_name(dest.name + ".sha256-mismatch")
        os.replace(part, aside)
        raise ChecksumError(
            f"{dest.name}: SHA-256 {got}, expected {sha256}; the file was set aside as {aside.name} "
            "(a changed or damaged file, or a wrong mirror); delete it and run again"
        )
    os.replace(part, dest)
    return dest


def layout_help(name: str) -> str:
    """The layout prepare_data's loader for `name` expects (its docstring: one place for it)."""
    return inspect.cleandoc(LOADERS[name].__doc__ or "")


def manual_message(dataset: Dataset, target: Path) -> str:
    return (
        f"{dataset.title} has no direct download: get it from {dataset.manual} (licence: {dataset.licence}), "
        f"unpack it as {target.name}/ under the data root in this layout, then run this again:\n"
        f"{layout_help(dataset.name)}"
    )


def download(
    name: str,
    root: str | os.PathLike,
    mirror: str | None = None,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Make `root/<name>/` hold the prepared dataset (meta.json); returns that folder.

    A folder already holding meta.json is left as is; a folder without one (unpacked by hand) is only
    prepared; otherwise the publisher's files (or `mirror`'s, under the same names) are fetched, checked
    against `checksums` or the table's SHA-256, unpacked and prepared.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    dataset, root = DATASETS[name], Path(root)
    target = root / name
    if (target / "meta.json").is_file():
        return target
    if not target.is_dir():
        if not dataset.files:
            raise ManualDownloadError(manual_message(dataset, target))
        say(f"{dataset.title}: licence {dataset.licence}; by downloading it you accept its terms")
        archives = [
            _fetch_remote(r, root / DOWNLOADS, mirror, checksums or {}, progress, say) for r in dataset.files
        ]
        _unpack(dataset, archives, target)
    prepare(name, target)
    return target


def _fetch_remote(
    remote: Remote, folder: Path, mirror: str | None, checksums: dict[str, str], progress: bool, say
) -> Path:
    url = f"{mirror.rstrip('/')}/{remote.filename}" if mirror else remote.url
    sha = checksums.get(remote.filename, remote.sha256)
    return fetch(url, folder / remote.filename, sha, progress, say)


def _unpack(dataset: Dataset, archives: list[Path], target: Path) -> None:
    """Each archive into its own folder, then their `inside` folders merged into `target` (renamed last)."""
    work = target.with_name(f".{target.name}.unpack")
    shutil.rmtree(work, ignore_errors=True)
    assemble = work / "dataset"
    assemble.mkdir(parents=True)
    try:
        for i, archive in enumerate(archives):
            extract(archive, work / str(i))
            top = work / str(i) / dataset.inside
            if not top.is_dir():
                raise DownloadError(
                    f"{archive.name}: no {dataset.inside}/ folder inside; expected the publisher's archive"
                )
            for child in top.iterdir():
                if (assemble / child.name).exists():
                    raise DownloadError(
                        f"{archive.name}: {child.name} is also in another archive of {dataset.name}"
                    )
                child.rename(assemble / child.name)
        os.replace(assemble, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.download", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dataset",
        nargs="+",
        required=True,
        choices=list(DATASETS),
        metavar="NAME",
        help="one or more of: " + ", ".join(DATASETS),
    )
    ap.add_argument("--root", default="data", help="data root: each dataset goes to ROOT/NAME (default data)")
    ap.add_argument(
        "--mirror", metavar="URL", default=None, help="fetch the files from here, under their official names"
    )
    ap.add_argument(
        "--checksums", metavar="FILE", default=None, help="SHA-256 per file name (sha256sum format)"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        checksums = read_checksums(args.checksums) if args.checksums else {}
        for name in args.dataset:
            print(f"ready: {download(name, args.root, args.mirror, checksums, not args.no_progress)}")
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
