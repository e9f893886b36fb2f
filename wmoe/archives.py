"""Safe archive extraction (zip, tar, tar.gz, tar.bz2, tar.xz): the one place that decides which members
may be written and how many bytes they may take.

A member is refused when its name leaves the extraction root (`..`, an absolute path, a drive letter),
when it is anything but a regular file or a folder (symbolic and hard links, devices, fifos, encrypted
zip members), or when it repeats a name already written. A zip declaring more members than allowed is
refused from its end record, before its directory is read. Sizes declared in headers are never trusted: bytes are counted as they
are decompressed, so a member that grows past `Limits.member_bytes`, or an archive past
`Limits.total_bytes`, is stopped while streaming. Extraction is all or nothing: members go into a fresh
folder beside the destination, renamed into place only when every member was written; on any error the
folder is removed and nothing is left behind. Every refusal is an `ArchiveError` naming the member by its
name inside the archive (never a path on this machine).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import WMoEError

CHUNK = 1 << 20
GIB = 1 << 30


class ArchiveError(WMoEError, ValueError):
    """An archive that cannot be extracted safely; the message names the archive and the member."""


class UnsafeMemberError(ArchiveError):
    """A member whose name or kind would write outside the extraction root (or not a plain file)."""


class ArchiveTooLargeError(ArchiveError):
    """A member, or the archive as a whole, decompresses past its byte budget or member count."""


class BrokenArchiveError(ArchiveError):
    """A truncated or damaged archive (a bad header, a CRC mismatch, an unexpected end of data)."""


@dataclass(frozen=True)
class Limits:
    """Budgets counted on the decompressed bytes actually read, never on the sizes the headers declare."""

    total_bytes: int = 64 * GIB  # the largest public dataset archive here (MVTec AD) unpacks to ~5 GB
    member_bytes: int = 2 * GIB
    members: int = 500_000


@dataclass(frozen=True)
class _Member:
    name: str  # as written in the archive
    kind: str  # "file", "dir" or what was refused ("symlink", "hardlink", "device", "fifo", "other")
    open: object  # () -> binary stream, for files


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, or UnsafeMemberError when it would leave the root.

    Both `/` and `\\` separate components (archives made on Windows use either). Absolute names, drive
    letters, `..` and NUL characters are refused; `.` and empty components are dropped.
    """
    if "\x00" in name:
        raise UnsafeMemberError(f"member {name!r}: NUL character in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or PurePosixPath(unified).is_absolute():
        raise UnsafeMemberError(f"member {name!r}: absolute path")
    parts = tuple(p for p in unified.split("/") if p not in ("", "."))
    if parts and len(parts[0]) >= 2 and parts[0][1] == ":":
        raise UnsafeMemberError(f"member {name!r}: drive letter")
    if ".." in parts:
        raise UnsafeMemberError(f"member {name!r}: '..' leaves the extraction folder")
    return parts


def zip_declared_members(path: str | os.PathLike) -> int:
    """The member count a zip's end record declares, read before zipfile parses the whole central
    directory (a small file can declare millions of members); a Zip64 end record counts as unlimited."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - (1 << 16) - 22))  # the end record and its comment (at most 64 KiB)
        tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 12:
        return 0  # no end record: zipfile reports the archive as damaged
    count = int.from_bytes(tail[end + 10 : end + 12], "little")
    return sys.maxsize if count == 0xFFFF else count


def zip_member_kind(info: zipfile.ZipInfo) -> str:
    """What a zip member is: "file" or "dir", which may be read, or what is refused ("symlink",
    "encrypted file", "device", "fifo", "other")."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    if info.is_dir():
        return "dir"
    if info.flag_bits & 0x1:
        return "encrypted file"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "device"
        return "fifo" if stat.S_ISFIFO(mode) else "other"
    return "file"


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        yield _Member(info.filename, zip_member_kind(info), lambda info=info: archive.open(info))


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for info in archive:  # streaming: one header at a time
        if info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        elif info.ischr() or info.isblk():
            kind = "device"
        elif info.isfifo():
            kind = "fifo"
        elif info.isdir():
            kind = "dir"
        elif info.isreg():
            kind = "file"
        else:
            kind = "other"
        yield _Member(info.name, kind, lambda info=info: archive.extractfile(info))


def copy_counted(src: BinaryIO, dst: BinaryIO, name: str, limits: Limits, used: int = 0) -> int:
    """Copy a member's stream `src` to `dst` a chunk at a time, counting the bytes read: ArchiveTooLargeError
    as soon as the member passes `limits.member_bytes` or `used` plus it passes `limits.total_bytes`
    (whatever its headers declare); returns the archive's new total."""
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if size > limits.member_bytes:
            raise ArchiveTooLargeError(
                f"member {name!r}: more than {limits.member_bytes:,} bytes once decompressed"
            )
        if used + size > limits.total_bytes:
            raise ArchiveTooLargeError(
                f"member {name!r}: the archive unpacks to more than {limits.total_bytes:,} bytes"
            )
        dst.write(chunk)
    return used + size


def _extract_into(members: Iterator[_Member], staging: Path, limits: Limits) -> int:
    count, used = 0, 0
    for member in members:
        count += 1
        if count > limits.members:
            raise ArchiveTooLargeError(f"more than {limits.members:,} members (at {member.name!r})")
        parts = safe_parts(member.name)
        if member.kind not in ("file", "dir"):
            raise UnsafeMemberError(
                f"member {member.name!r}: a {member.kind}; only files and folders are extracted"
            )
        if not parts:
            continue
        target = staging.joinpath(*parts)
        if member.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            dst = open(target, "xb")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise UnsafeMemberError(
                f"member {member.name!r}: its name is used twice in the archive"
            ) from None
        with member.open() as src, dst:
            used = copy_counted(src, dst, member.name, limits, used)
    return count


def extract(archive: str | os.PathLike, dest: str | os.PathLike, limits: Limits = Limits()) -> int:
    """Extract a zip or tar archive (gz/bz2/xz compressed or not) into `dest`, a folder that must not
    exist yet; returns the number of members. All or nothing (see the module docstring)."""
    archive, dest = Path(archive), Path(dest)
    label = archive.name
    if dest.exists():
        raise ArchiveError(f"{label}: the extraction folder {dest.name} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.extracting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            declared = zip_declared_members(archive)
            if declared > limits.members:
                raise ArchiveTooLargeError(f"declares more than {limits.members:,} members")
            with zipfile.ZipFile(archive) as zf:
                count = _extract_into(_zip_members(zf), staging, limits)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, mode="r:*") as tf:
                count = _extract_into(_tar_members(tf), staging, limits)
        else:
            raise BrokenArchiveError(f"{label}: neither a zip nor a tar archive (or its start is damaged)")
        os.replace(staging, dest)
    except ArchiveError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise type(e)(e.args[0] if e.args[0].startswith(label) else f"{label}: {e.args[0]}") from None
    except (
        zipfile.BadZipFile,
        gzip.BadGzipFile,
        tarfile.TarError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        NotImplementedError,  # a compression method zipfile does not support
    ) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokenArchiveError(f"{label}: truncated or damaged ({type(e).__name__}: {e})") from None
    except OSError as e:  # the local disk (full, read-only), not the archive
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"{label}: cannot write the extracted files ({e.strerror or e})") from None
    return count


__all__ = [
    "ArchiveError",
    "ArchiveTooLargeError",
    "BrokenArchiveError",
    "Limits",
    "UnsafeMemberError",
    "copy_counted",
    "extract",
    "safe_parts",
    "zip_declared_members",
    "zip_member_kind",
]
