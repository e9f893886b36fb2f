"""A loopback HTTP server for the download tests, and tiny archives in each publisher's real layout.

`DatasetServer` serves {file name: bytes} on 127.0.0.1 with HTTP Range support (switchable), can drop the
connection halfway through a file's first request, and records every request (path, Range header).
The archive builders write synthetic images (training.synthetic) in MVTec AD's, VisA's and BTAD's layouts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from training.synthetic import generate


class DatasetServer:
    def __init__(self, files: dict[str, bytes], ranges: bool = True):
        self.files, self.ranges = dict(files), ranges
        self.drop_first: set[str] = set()  # names whose first GET is cut halfway
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                wanted = self.headers.get("Range")
                if server.ranges and wanted and wanted.startswith("bytes="):
                    start = int(wanted[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.drop_first:
                    server.drop_first.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def checksums(self, path: Path, wrong: str = "") -> Path:
        """A sha256sum file of the served files (one entry made wrong, if named)."""
        lines = []
        for name, data in self.files.items():
            digest = hashlib.sha256(data).hexdigest()
            lines.append(f"{'0' * 64 if name == wrong else digest}  {name}")
        path.write_text("\n".join(lines) + "\n")
        return path


def _mvtec_tree(folder: Path, categories, seed: int, size: int) -> Path:
    generate(
        folder, categories, n_train_good=4, n_test_good=3, n_test_defect_per_type=2, size=size, seed=seed
    )
    return folder


def _tar(folder: Path, mode: str, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=prefix + p.relative_to(folder).as_posix())
    return buffer.getvalue()


def mvtec_archive(tmp: Path, categories=("felt:noise", "nut:disc"), size: int = 48) -> bytes:
    """mvtec_anomaly_detection.tar.xz: `<class>/{train,test,ground_truth}/...` at the top level."""
    return _tar(_mvtec_tree(tmp / "mvtec_src", list(categories), 1, size), "w:xz")


def btad_archive(tmp: Path, size: int = 48) -> bytes:
    """btad.zip: `BTech_Dataset_transformed/01/{train/ok,test/ok,test/ko,ground_truth/ko}` (masks: same stem)."""
    src = _mvtec_tree(tmp / "btad_src", ["washer:disc"], 2, size)
    out = tmp / "btad_tree" / "01"
    for split in ("train", "test"):
        shutil.copytree(src / "washer" / split / "good", out / split / "ok")
    for defect in sorted(p for p in (src / "washer" / "test").iterdir() if p.name != "good"):
        for img in sorted(defect.iterdir()):
            (out / "test" / "ko").mkdir(parents=True, exist_ok=True)
            shutil.copy(img, out / "test" / "ko" / f"{defect.name}_{img.name}")
            mask = src / "washer" / "ground_truth" / defect.name / f"{img.stem}_mask.png"
            (out / "ground_truth" / "ko").mkdir(parents=True, exist_ok=True)
            shutil.copy(mask, out / "ground_truth" / "ko" / f"{defect.name}_{img.name}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted((tmp / "btad_tree").rglob("*")):
            if p.is_file():
                zf.write(p, "BTech_Dataset_transformed/" + p.relative_to(tmp / "btad_tree").as_posix())
    return buffer.getvalue()


def visa_archive(tmp: Path, size: int = 48) -> bytes:
    """VisA_20220922.tar: `<object>/Data/Images/{Normal,Anomaly}/`, `Data/Masks/Anomaly/`, split_csv/1cls.csv."""
    src = _mvtec_tree(tmp / "visa_src", ["candle:disc", "pcb1:part"], 3, size)
    out = tmp / "visa_tree"
    rows = [["object", "split", "label", "image", "mask"]]
    for cls_dir in sorted(src.iterdir()):
        obj, n = cls_dir.name, 0
        images, masks = out / obj / "Data" / "Images", out / obj / "Data" / "Masks" / "Anomaly"
        for split in ("train", "test"):
            for img in sorted((cls_dir / split / "good").iterdir()):
                rel = f"{obj}/Data/Images/Normal/{n:04d}.JPG"
                (images / "Normal").mkdir(parents=True, exist_ok=True)
                shutil.copy(img, out / rel)
                rows.append([obj, split, "normal", rel, ""])
                n += 1
        for defect in sorted(p for p in (cls_dir / "test").iterdir() if p.name != "good"):
            for img in sorted(defect.iterdir()):
                rel, mask_rel = (
                    f"{obj}/Data/Images/Anomaly/{n:03d}.JPG",
                    f"{obj}/Data/Masks/Anomaly/{n:03d}.png",
                )
                (images / "Anomaly").mkdir(parents=True, exist_ok=True)
                masks.mkdir(parents=True, exist_ok=True)
                shutil.copy(img, out / rel)
                shutil.copy(cls_dir / "ground_truth" / defect.name / f"{img.stem}_mask.png", out / mask_rel)
                rows.append([obj, "test", "anomaly", rel, mask_rel])
                n += 1
    (out / "split_csv").mkdir(parents=True)
    with open(out / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return _tar(out, "w")
