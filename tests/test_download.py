"""training.download against a loopback HTTP server serving tiny archives in the publishers' layouts."""

import hashlib
import io
import json
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from support.dataset_server import DatasetServer, btad_archive, mvtec_archive, visa_archive

from training import download as dl
from training.datasets import DATASETS
from training.prepare_data import LOADERS
from wmoe.errors import EXIT_ERROR, EXIT_OK

MVTEC, VISA, BTAD = "mvtec_anomaly_detection.tar.xz", "VisA_20220922.tar", "btad.zip"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archives")
    return {MVTEC: mvtec_archive(tmp), VISA: visa_archive(tmp), BTAD: btad_archive(tmp)}


def run(server: DatasetServer, tmp: Path, *datasets: str, wrong: str = "") -> int:
    sums = server.checksums(tmp / "SHA256SUMS", wrong=wrong)
    argv = ["--dataset", *datasets, "--root", str(tmp / "data"), "--mirror", server.url]
    return dl.main([*argv, "--checksums", str(sums), "--no-progress"])


def test_the_table_covers_the_14_datasets_and_records_where_each_checksum_came_from():
    assert set(DATASETS) == set(LOADERS) - {"folder"} and len(DATASETS) == 14
    direct = [d for d in DATASETS.values() if d.files]
    assert {"mvtec", "visa", "btad"} <= {d.name for d in direct}
    for d in DATASETS.values():
        assert bool(d.files) != bool(d.manual), d.name  # a direct download, or where to get it by hand
        for r in d.files:
            assert r.url.startswith("https://") and r.source
            assert r.sha256 is None or (len(r.sha256) == 64 and int(r.sha256, 16) >= 0)
    assert "non-commercial" in DATASETS["mvtec"].licence.lower()


def test_full_download_of_each_layout_prepares_meta_json(tmp_path, archives, capsys):
    with DatasetServer(archives) as server:
        assert run(server, tmp_path, "mvtec", "visa", "btad") == EXIT_OK
        out = capsys.readouterr().out
        for name, classes in (("mvtec", {"felt", "nut"}), ("visa", {"candle", "pcb1"}), ("btad", {"01"})):
            meta = json.loads((tmp_path / "data" / name / "meta.json").read_text())
            assert set(meta["test"]) == classes
            assert any(e["anomaly"] and e["mask_path"] for v in meta["test"].values() for e in v)
        assert out.count("licence") == 3 and "CC BY-NC-SA 4.0 (non-commercial" in out
        assert (tmp_path / "data/downloads" / MVTEC).read_bytes() == archives[MVTEC]
        assert not list((tmp_path / "data").glob(".*"))  # no staging folder left behind
        n = len(server.requests)
        assert run(server, tmp_path, "mvtec", "visa", "btad") == EXIT_OK  # already there: no request
        assert len(server.requests) == n and "licence" not in capsys.readouterr().out


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path, archives):
    with DatasetServer({MVTEC: archives[MVTEC]}) as server:
        server.drop_first = {MVTEC}
        assert run(server, tmp_path, "mvtec") == EXIT_OK
    (first, r1), (second, r2) = server.requests
    assert first == second == MVTEC and r1 is None
    assert r2 == f"bytes={len(archives[MVTEC]) // 2}-"
    assert (tmp_path / "data/downloads" / MVTEC).read_bytes() == archives[MVTEC]


def test_a_partial_file_from_an_earlier_run_is_resumed(tmp_path, archives):
    data = archives[BTAD]
    part = tmp_path / "data/downloads" / f"{BTAD}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    with DatasetServer({BTAD: data}) as server:
        assert run(server, tmp_path, "btad") == EXIT_OK
    assert server.requests == [(BTAD, "bytes=1000-")]
    assert (tmp_path / "data/btad/meta.json").is_file() and not part.exists()


def test_a_server_without_range_support_restarts_from_zero(tmp_path, archives):
    with DatasetServer({MVTEC: archives[MVTEC]}, ranges=False) as server:
        server.drop_first = {MVTEC}
        assert run(server, tmp_path, "mvtec") == EXIT_OK
    assert [r for _, r in server.requests] == [None, f"bytes={len(archives[MVTEC]) // 2}-"]
    assert (tmp_path / "data/downloads" / MVTEC).read_bytes() == archives[MVTEC]  # not doubled
    assert (tmp_path / "data/mvtec/meta.json").is_file()


def test_a_wrong_checksum_sets_the_file_aside(tmp_path, archives, capsys):
    with DatasetServer({VISA: archives[VISA]}) as server:
        assert run(server, tmp_path, "visa", wrong=VISA) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "SHA-256" in err and "expected " + "0" * 64 in err and str(tmp_path) not in err
    aside = tmp_path / "data/downloads" / f"{VISA}.sha256-mismatch"
    assert aside.read_bytes() == archives[VISA]
    assert not (tmp_path / "data/downloads" / VISA).exists() and not (tmp_path / "data/visa").exists()


def hostile_tar(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tf:
        info = tarfile.TarInfo("bottle/test/good/000.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"png"))
        if name == "symlink":
            link = tarfile.TarInfo("bottle/link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc"
            tf.addfile(link)
        else:
            evil = tarfile.TarInfo(name)
            evil.size = 4
            tf.addfile(evil, io.BytesIO(b"evil"))
    return buffer.getvalue()


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "symlink"])
def test_hostile_members_are_refused_and_nothing_is_written(tmp_path, member, capsys):
    with DatasetServer({MVTEC: hostile_tar(member)}) as server:
        assert run(server, tmp_path, "mvtec") == EXIT_ERROR
    err = capsys.readouterr().err
    assert MVTEC in err and "member" in err
    assert not (tmp_path / "data/mvtec").exists() and not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]


def test_a_truncated_archive_is_a_clear_error(tmp_path, archives, capsys):
    with DatasetServer({MVTEC: archives[MVTEC][: len(archives[MVTEC]) // 2]}) as server:
        assert run(server, tmp_path, "mvtec") == EXIT_ERROR
    assert "truncated or damaged" in capsys.readouterr().err
    assert not (tmp_path / "data/mvtec").exists()


def test_unreachable_host_fails_fast(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    argv = ["--dataset", "mvtec", "--root", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}"]
    assert dl.main(argv) == EXIT_ERROR
    assert time.perf_counter() - start < 5
    assert "cannot reach 127.0.0.1" in capsys.readouterr().err


def test_a_dataset_behind_a_login_says_where_and_which_layout(tmp_path, capsys):
    assert dl.main(["--dataset", "mpdd", "--root", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "github.com/stepanje/MPDD" in err and "ground_truth/<defect>/000_mask.png" in err


def test_a_folder_unpacked_by_hand_is_only_prepared(tmp_path, archives):
    tar = tarfile.open(fileobj=io.BytesIO(archives[MVTEC]))
    tar.extractall(tmp_path / "mvtec", filter="data")
    assert dl.download("mvtec", tmp_path, mirror="http://127.0.0.1:9", progress=False) == tmp_path / "mvtec"
    assert (tmp_path / "mvtec/meta.json").is_file()


def test_without_a_known_checksum_the_computed_one_is_printed(tmp_path):
    said = []
    with DatasetServer({"x.zip": b"abc"}) as server:
        dl.fetch(f"{server.url}/x.zip", tmp_path / "x.zip", None, progress=False, say=said.append)
    assert said[-1].endswith(f"computed {hashlib.sha256(b'abc').hexdigest()} (pin it with --checksums)")


def test_a_malformed_checksum_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "sums").write_text("nothex  a.zip\n")
    assert (
        dl.main(["--dataset", "mvtec", "--root", str(tmp_path), "--checksums", str(tmp_path / "sums")])
        == EXIT_ERROR
    )
    assert "sums:1: expected" in capsys.readouterr().err


def test_a_mirror_that_is_not_a_url_is_a_clear_error(tmp_path, capsys):
    assert dl.main(["--dataset", "btad", "--root", str(tmp_path), "--mirror", "not-a-url"]) == EXIT_ERROR
    assert "is not a URL" in capsys.readouterr().err


def test_a_206_for_another_range_restarts_from_zero(tmp_path, archives):
    data = archives[BTAD]
    part = tmp_path / "data/downloads" / f"{BTAD}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 500)
    with DatasetServer({BTAD: data}) as server:
        original = server.httpd.RequestHandlerClass.do_GET

        def lying(handler):  # answers bytes 100- to a request for bytes 500-
            if handler.headers.get("Range") == "bytes=500-":
                del handler.headers["Range"]
                handler.headers["Range"] = "bytes=100-"
            original(handler)

        server.httpd.RequestHandlerClass.do_GET = lying
        assert run(server, tmp_path, "btad") == EXIT_OK
    assert [r for _, r in server.requests] == ["bytes=100-", None]
    assert (tmp_path / "data/downloads" / BTAD).read_bytes() == data


def isic_zips() -> dict[str, bytes]:
    """ISIC 2016's two archives, each with its own top folder (images; `<stem>_Segmentation.png` masks)."""
    from PIL import Image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (16, 16), value).save(buffer, "PNG")
        return buffer.getvalue()

    out = {}
    for name, suffix in (("Test_Data", ".jpg"), ("Test_GroundTruth", "_Segmentation.png")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for n in (3, 4):
                zf.writestr(
                    f"ISBI2016_ISIC_Part1_{name}/ISIC_000000{n}{suffix}", png(255 if "Ground" in name else 90)
                )
        out[f"ISBI2016_ISIC_Part1_{name}.zip"] = buffer.getvalue()
    return out


def test_two_archives_without_published_checksums_are_merged_and_their_sha256_printed(tmp_path, capsys):
    files = isic_zips()
    with DatasetServer(files) as server:
        argv = [
            "--dataset",
            "isic",
            "--root",
            str(tmp_path / "data"),
            "--mirror",
            server.url,
            "--no-progress",
        ]
        assert dl.main(argv) == EXIT_OK
    meta = json.loads((tmp_path / "data/isic/meta.json").read_text())
    assert [e["mask_path"] for e in meta["test"]["isic"]] == [
        f"ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_000000{n}_Segmentation.png" for n in (3, 4)
    ]
    out = capsys.readouterr().out
    for name, data in files.items():
        assert f"{name}: no published SHA-256 is known; computed {hashlib.sha256(data).hexdigest()}" in out
