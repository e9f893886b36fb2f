"""Batch uploads unpacked: every file of a request, a .zip contributing each of its members, under the
library's safe-archive rules (`wmoe.archives`): the member count its end record declares is read first,
only plain files are read, and bytes are counted as they are decompressed against a per-image and a
per-request budget, whatever the headers claim. Here, in memory (nothing is written to disk), and an
archive inside the archive is refused."""

from __future__ import annotations

import functools
import io
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from demo.guards import read_upload
from wmoe import ImageError
from wmoe.archives import (
    CHUNK,
    ArchiveTooLargeError,
    Limits,
    copy_counted,
    zip_declared_members,
    zip_member_kind,
)
from wmoe.preprocess import load_image

MAX_ZIP_MEMBER_BYTES = 50 * 2**20  # unpacked, counted while unpacking (headers can lie)
MAX_UNPACKED_BYTES = 500 * 2**20  # unpacked from all the archives of one Batch request
MAX_ZIP_ENTRIES = 2000
ZIP_CHUNK = CHUNK  # decompressed at a time (wmoe.archives)
ARCHIVES = {".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst"}


@dataclass
class Budget:
    """One Batch request's limits and the bytes its archives have decompressed so far."""

    limits: Limits
    used: int = 0


def batch_items(paths: list[str]) -> Iterator[tuple[str, Callable[[], Image.Image]]]:
    """(name, loader) for every file uploaded; a .zip contributes each of its files, unpacked as a stream
    against one byte budget for the whole request (`Budget`), whatever its headers claim."""
    limits = Limits(
        total_bytes=MAX_UNPACKED_BYTES, member_bytes=MAX_ZIP_MEMBER_BYTES, members=MAX_ZIP_ENTRIES
    )
    budget = Budget(limits)
    for path in paths:
        if not zipfile.is_zipfile(path):
            yield Path(path).name, functools.partial(read_upload, path)
            continue
        entries = zip_declared_members(path)
        if entries > limits.members:
            shown = "too many" if entries == sys.maxsize else f"{entries:,}"  # a Zip64 count: unlimited
            why = f"{shown} entries, over the limit of {limits.members:,} per archive: not unpacked"
            yield Path(path).name, functools.partial(refuse, why)
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            yield Path(path).name, functools.partial(refuse, f"a damaged .zip ({e})")
            continue
        for m in members:
            hidden = m.filename.startswith("__MACOSX/") or Path(m.filename).name.startswith(".")
            if zip_member_kind(m) != "dir" and not hidden:
                yield m.filename, functools.partial(zip_member, path, m, budget)


def refuse(reason: str):
    raise ImageError(reason)


def zip_member(path: str, member: zipfile.ZipInfo, budget: Budget) -> Image.Image:
    """One archive member, decompressed chunk by chunk by `wmoe.archives.copy_counted`: never more than
    MAX_ZIP_MEMBER_BYTES of it, nor more than what is left of the request's budget, whatever sizes its
    headers declare. Refused bytes count too: once the budget is spent, nothing more is decompressed."""
    name, kind, limits, used = member.filename, zip_member_kind(member), budget.limits, budget.used
    if kind != "file":
        raise ImageError(f"{name}: not unpacked ({kind}; only plain, unencrypted files are)")
    if Path(name).suffix.lower() in ARCHIVES:
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    over = (  # the smaller limit is the one a member meets first
        f"over the limit of {limits.member_bytes // 2**20} MB unpacked per image"
        if limits.member_bytes <= limits.total_bytes - used
        else f"over the limit of {limits.total_bytes // 2**20} MB unpacked per request: not unpacked"
    )
    if used >= limits.total_bytes:
        raise ImageError(f"{name}: {over}")
    data = io.BytesIO()
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            budget.used = copy_counted(stream, data, name, limits, used)
    except ArchiveTooLargeError:
        budget.used = used + data.tell() + ZIP_CHUNK  # the chunk that went over was decompressed too
        raise ImageError(f"{name}: {over}") from None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, zlib.error) as e:
        budget.used = used + data.tell()
        raise ImageError(f"{name}: cannot be unpacked ({e})") from None  # damaged, odd method, lying sizes
    payload = data.getvalue()
    if payload.startswith(b"PK\x03\x04"):
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    try:
        return load_image(payload)
    except ImageError as e:
        raise ImageError(str(e).replace("the uploaded bytes", name)) from None


def folder_class(name: str) -> str:
    """The name of the folder a .zip member sits in ("screw/001.png" -> "screw"), or "" at the top."""
    return PurePosixPath(name).parent.name
