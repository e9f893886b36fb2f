"""wmoe.archives: hand-made hostile archives are refused, nothing is written outside (or inside) the root."""

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from wmoe.archives import (
    ArchiveTooLargeError,
    BrokenArchiveError,
    Limits,
    UnsafeMemberError,
    extract,
    safe_parts,
)
from wmoe.errors import WMoEError


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                tf.addfile(m)
    return path


def tar_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def make_zip(path: Path, members: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


@pytest.fixture
def box(tmp_path):
    """A sandbox: archives are extracted to box/out; box/outside must stay empty."""
    (tmp_path / "outside").mkdir()
    return tmp_path


def refused(box: Path, archive: Path, error=UnsafeMemberError, limits: Limits | None = None) -> str:
    with pytest.raises(error) as caught:
        extract(archive, box / "out", limits or Limits())
    assert not (box / "out").exists(), "a refused archive must leave nothing behind"
    assert files_under(box) == sorted(["outside", archive.name]), files_under(box)
    assert str(box) not in str(caught.value), "the message names members, never local paths"
    assert isinstance(caught.value, WMoEError)
    return str(caught.value)


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tar.xz", "w:xz")])
def test_a_plain_tar_extracts_all_its_files(box, suffix, mode):
    archive = make_tar(
        box / f"a{suffix}", [("top/a.txt", b"hello"), ("top/sub/b.bin", bytes(range(256)) * 9)], mode
    )
    assert extract(archive, box / "out") == 2
    assert (box / "out/top/a.txt").read_bytes() == b"hello"
    assert (box / "out/top/sub/b.bin").read_bytes() == bytes(range(256)) * 9


def test_a_plain_zip_extracts_and_windows_separators_become_folders(box):
    archive = make_zip(box / "a.zip", [("top/", b""), ("top/a.txt", b"x" * 1000), ("top\\win\\c.txt", b"c")])
    assert extract(archive, box / "out") == 3
    assert files_under(box / "out") == ["top", "top/a.txt", "top/win", "top/win/c.txt"]


@pytest.mark.parametrize(
    "name", ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt", "..\\escape.txt", "C:/x.txt"]
)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_names_leaving_the_root_are_refused(box, name, kind):
    members = [("ok.txt", b"fine"), (name, b"evil")]
    archive = make_zip(box / "h.zip", members) if kind == "zip" else make_tar(box / "h.tar", members)
    message = refused(box, archive)
    assert repr(name) in message


@pytest.mark.parametrize(
    "info,what",
    [
        (tar_info("link", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
        (tar_info("hard", tarfile.LNKTYPE, "ok.txt"), "hardlink"),
        (tar_info("dev", tarfile.CHRTYPE), "device"),
        (tar_info("blk", tarfile.BLKTYPE), "device"),
        (tar_info("pipe", tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(box, info, what):
    archive = make_tar(box / "h.tar.gz", [("ok.txt", b"fine"), info], "w:gz")
    message = refused(box, archive)
    assert what in message and repr(info.name) in message


def test_a_symlink_then_a_file_through_it_is_refused_at_the_link(box):
    archive = make_tar(
        box / "h.tar", [tar_info("d", tarfile.SYMTYPE, str(box / "outside")), ("d/pwned.txt", b"x")]
    )
    refused(box, archive)
    assert files_under(box / "outside") == []


def test_a_zip_symlink_is_refused(box):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777) << 16  # S_IFLNK
    with zipfile.ZipFile(box / "h.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    assert "symlink" in refused(box, box / "h.zip")


def test_a_repeated_name_is_refused(box):
    archive = make_tar(box / "h.tar", [("a.txt", b"1"), ("a.txt", b"2")])
    assert "twice" in refused(box, archive)


def test_the_member_budget_is_counted_while_streaming(box):
    archive = make_tar(box / "big.tar.gz", [("small.txt", b"s"), ("big.bin", b"\0" * 50_000)], "w:gz")
    message = refused(box, archive, ArchiveTooLargeError, Limits(member_bytes=10_000))
    assert "'big.bin'" in message
    assert "total" not in message
    message = refused(box, archive, ArchiveTooLargeError, Limits(total_bytes=20_000))
    assert "'big.bin'" in message


def test_the_member_count_is_limited(box):
    archive = make_tar(box / "many.tar", [(f"f{i}.txt", b"x") for i in range(5)])
    assert "more than 3 members" in refused(box, archive, ArchiveTooLargeError, Limits(members=3))


def lying_zip(path: Path, data: bytes, declared: int) -> Path:
    """A zip whose headers declare `declared` bytes for a member of len(data) bytes (a zip-bomb trick)."""
    make_zip(path, [("bomb.bin", data)])
    raw = bytearray(path.read_bytes())
    # local header: uncompressed size at offset 22; central directory entry: at offset 24
    struct.pack_into("<I", raw, 22, declared)
    central = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, declared)
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_lying_about_its_size_is_refused(box):
    data = b"\0" * 200_000
    archive = lying_zip(box / "bomb.zip", data, declared=100)
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 100  # the header does lie
    # the budget is the bytes read, not the declared size: the member never gets written in full
    refused(box, archive, (ArchiveTooLargeError, BrokenArchiveError), Limits(member_bytes=1000))
    refused(box, archive, BrokenArchiveError)  # within budget, the lie still shows as a damaged member


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar.xz"])
def test_a_truncated_archive_is_a_clear_error(box, kind):
    payload = zlib.compress(bytes(range(256)) * 4000)  # incompressible enough to span many blocks
    members = [("a.bin", payload), ("b.bin", payload)]
    full = (
        make_zip(box / "full.zip", members)
        if kind == "zip"
        else make_tar(box / f"full.{kind}", members, f"w:{kind[4:]}")
    )
    cut = box / f"cut.{kind}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    full.unlink()
    message = refused(box, cut, BrokenArchiveError)
    assert cut.name in message and ("truncated" in message or "damaged" in message)


def test_not_an_archive(box):
    (box / "x.tar").write_bytes(b"this is not an archive at all" * 10)
    refused(box, box / "x.tar", BrokenArchiveError)


def test_the_destination_must_not_exist(box):
    archive = make_tar(box / "a.tar", [("a.txt", b"1")])
    (box / "out").mkdir()
    with pytest.raises(WMoEError, match="already exists"):
        extract(archive, box / "out")


def test_safe_parts_drops_dots_and_keeps_names():
    assert safe_parts("./a//b/./c.txt") == ("a", "b", "c.txt")
    with pytest.raises(UnsafeMemberError):
        safe_parts("a\x00b")


def test_an_encrypted_zip_member_is_refused(box):
    raw = bytearray(make_zip(box / "enc.zip", [("secret.txt", b"flagged as encrypted")]).read_bytes())
    raw[6] |= 0x1  # the general-purpose flags: bit 0 = encrypted, in the local header ...
    raw[raw.rfind(b"PK\x01\x02") + 8] |= 0x1  # ... and in the central directory
    (box / "enc.zip").write_bytes(bytes(raw))
    assert zipfile.ZipFile(box / "enc.zip").infolist()[0].flag_bits & 0x1
    assert "encrypted file" in refused(box, box / "enc.zip")


def test_a_zip_declaring_too_many_members_is_refused_before_its_directory_is_read(box, monkeypatch):
    archive = make_zip(box / "many.zip", [(f"f{i}.txt", b"x") for i in range(5)])
    monkeypatch.setattr(zipfile, "ZipFile", None)  # never opened: the end record alone decides
    message = refused(box, archive, ArchiveTooLargeError, Limits(members=3))
    assert "declares more than 3 members" in message
