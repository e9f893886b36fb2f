"""Batch uploads unpacked: every file of a request, a .zip contributing each of its members, streamed
against byte budgets (per image, per request) whatever the archive's headers claim."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from demo.guards import read_upload
from wmoe import ImageError
from wmoe.preprocess import load_image

MAX_ZIP_MEMBER_BYTES = 50 * 2**20  # unpacked, counted while unpacking (headers can lie)
MAX_UNPACKED_BYTES = 500 * 2**20  # unpacked from all the archives of one Batch request
MAX_ZIP_ENTRIES = 2000
ZIP_CHUNK = 2**20
ARCHIVES = {".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst"}


def batch_items(paths: list[str]) -> Iterator[tuple[str, Callable[[], Image.Image]]]:
    """(name, loader) for every file uploaded; a .zip contributes each of its files, unpacked as a stream
    against one byte budget for the whole request (`Unpacked`), whatever its headers claim."""
    budget = Unpacked(MAX_UNPACKED_BYTES)
    for path in paths:
        if not zipfile.is_zipfile(path):
            yield Path(path).name, functools.partial(read_upload, path)
            continue
        entries = zip_entries(path)
        if entries > MAX_ZIP_ENTRIES:
            yield (
                Path(path).name,
                functools.partial(
                    refuse,
                    f"{entries:,} entries, over the limit of {MAX_ZIP_ENTRIES:,} per archive: not unpacked",
                ),
            )
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            yield Path(path).name, functools.partial(refuse, f"a damaged .zip ({e})")
            continue
        for m in members:
            hidden = m.filename.startswith("__MACOSX/") or Path(m.filename).name.startswith(".")
            if not m.is_dir() and not hidden:
                yield m.filename, functools.partial(zip_member, path, m, budget)


def refuse(reason: str):
    raise ImageError(reason)


def zip_entries(path: str) -> int:
    """The entry count an archive's end record declares, read before zipfile parses the whole directory
    (a 50 MB upload can declare a million entries); a Zip64 record counts as too many."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 2**16 - 22))
        tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 12:
        return 0  # no end record: zipfile will say it is damaged
    entries = int.from_bytes(tail[end + 10 : end + 12], "little")
    return MAX_ZIP_ENTRIES + 1 if entries == 0xFFFF else entries


@dataclass
class Unpacked:
    """The bytes one Batch request may still unpack from its archives."""

    left: int


def zip_member(path: str, member: zipfile.ZipInfo, budget: Unpacked) -> Image.Image:
    """One archive member, decompressed chunk by chunk: never more than MAX_ZIP_MEMBER_BYTES of it, nor
    more than the request's budget, are held, whatever sizes its headers declare."""
    name, limit = member.filename, min(MAX_ZIP_MEMBER_BYTES, budget.left)
    over = (
        f"over the limit of {MAX_ZIP_MEMBER_BYTES // 2**20} MB unpacked per image"
        if limit == MAX_ZIP_MEMBER_BYTES
        else f"over the limit of {MAX_UNPACKED_BYTES // 2**20} MB unpacked per request: not unpacked"
    )
    if member.flag_bits & 0x1:
        raise ImageError(f"{name}: encrypted (password-protected): not unpacked")
    if Path(name).suffix.lower() in ARCHIVES:
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    if member.file_size > limit:
        raise ImageError(f"{name}: {member.file_size / 2**20:.0f} MB unpacked, {over}")
    data = bytearray()
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            while chunk := stream.read(ZIP_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise ImageError(f"{name}: more than {limit / 2**20:.0f} MB unpacked, {over}")
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as e:
        raise ImageError(f"{name}: cannot be unpacked ({e})") from None  # damaged, odd method, lying sizes
    finally:
        budget.left -= len(data)
    if data.startswith(b"PK\x03\x04"):
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    try:
        return load_image(data)
    except ImageError as e:
        raise ImageError(str(e).replace("the uploaded bytes", name)) from None


def folder_class(name: str) -> str:
    """The name of the folder a .zip member sits in ("screw/001.png" -> "screw"), or "" at the top."""
    return PurePosixPath(name).parent.name
