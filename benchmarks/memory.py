"""Memory: peak resident memory (CPU) and peak allocated CUDA memory of a loaded detector and a prediction.

Random weights are first written the way real ones sit on disk (an open_clip backbone file named by
WMOE_BACKBONE_WEIGHTS, and a checkpoint of the heads), so loading takes the real path with its
transient copies. Then each measurement runs in a fresh process:
- detector: `Detector.from_pretrained(checkpoint)` and one `predict`; peak RSS (VmHWM) after the
  imports, after loading and after predicting; on CUDA also the peak allocated device memory;
- app: `python app.py --checkpoint ...` (the demo exactly as deployed, with its training-free
  baseline sharing the backbone), one Analyze request over HTTP, then the server's VmHWM
  (its CUDA memory is not visible from outside; the detector line gives it);
- app, two checkpoints: the same with `--checkpoint A --checkpoint B` (B: a copy of A's heads in another
  folder) on the one backbone file: both load once and share the backbone, so the peak should stay close
  to one checkpoint's; the ratio is printed.
Targets: the app process with ViT-L-14-336 in fp32 at most 3 GB (1e9 bytes) RSS on CPU; two checkpoints
at most 1.05x one.

    python -m benchmarks.memory                     # ViT-L-14-336, 518 px: detector fp32 and bf16, app fp32
    python -m benchmarks.memory --dtype fp32 --no-app
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from benchmarks import common
from wmoe.detector import Detector

TARGET_GB = 3.0  # app process, ViT-L-14-336, fp32, CPU
TARGET_TWO_CHECKPOINTS = 1.05  # app peak RSS with two checkpoints on one backbone / with one
GB = 1e9
APP_START_TIMEOUT_S = 900


def peak_rss_gb(pid: int | str = "self") -> float:
    """Peak resident set size of a process so far (VmHWM; ru_maxrss for this one where /proc is absent)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GB
    if pid != "self":
        sys.exit(f"cannot read the peak memory of process {pid}: /proc/{pid}/status is unavailable")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / GB  # bytes on macOS, KiB on Linux


def write(spec: dict) -> dict:
    """The checkpoint files and the test picture (a PNG, decoded by predict as an upload would be)."""
    folder = Path(spec["folder"])
    weights, checkpoint = common.write_checkpoint(spec["backbone"], spec["image_size"], folder)
    common.picture(spec["input_px"]).save(folder / "picture.png")
    return {"weights": str(weights), "checkpoint": str(checkpoint), "picture": str(folder / "picture.png")}


def measure_detector(spec: dict) -> dict:
    """In a fresh process: peak memory after imports, after loading the checkpoint, after one prediction."""
    device = torch.device(spec["device"])
    result = {"peak_rss_imports_gb": peak_rss_gb()}
    det = Detector.from_pretrained(spec["checkpoint"], device=device, dtype=spec["dtype"])
    result["peak_rss_loaded_gb"] = peak_rss_gb()
    if device.type == "cuda":
        result["cuda_peak_allocated_loaded_gb"] = torch.cuda.max_memory_allocated(device) / GB
    det.predict(spec["picture"], "object")
    result["peak_rss_predicted_gb"] = peak_rss_gb()
    if device.type == "cuda":
        result["cuda_peak_allocated_predicted_gb"] = torch.cuda.max_memory_allocated(device) / GB
    return result


def measure_app(spec: dict, env: dict, folder: Path, checkpoints: list[str]) -> dict:
    """Start app.py as deployed with these checkpoints, wait until it serves, send one Analyze request,
    read its VmHWM, stop it."""
    from gradio_client import Client

    port = common.free_port()
    cmd = [
        sys.executable,
        str(common.ROOT / "app.py"),
        *(arg for c in checkpoints for arg in ("--checkpoint", c)),
        "--port",
        str(port),
        "--device",
        spec["device"],
        "--dtype",
        spec["dtype"],
    ]
    log_path = folder / "app.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT)
    try:
        start = time.perf_counter()
        while not _serving(url):
            if proc.poll() is not None or time.perf_counter() - start > APP_START_TIMEOUT_S:
                tail = log_path.read_text()[-3000:]
                sys.exit(f"app.py did not start (exit {proc.poll()}); its log:\n{tail}")
            time.sleep(1)
        result = {"app_start_s": time.perf_counter() - start, "peak_rss_loaded_gb": peak_rss_gb(proc.pid)}
        common.analyze_request(Client(url, verbose=False), Path(spec["picture"]))
        result["peak_rss_predicted_gb"] = peak_rss_gb(proc.pid)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def in_child(task: str, spec: dict, args, env: dict) -> dict:
    """Run one task of this script in a fresh Python process; its last stdout line is the result."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps({"task": task, **spec})]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.exit(f"the {task} process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=1)
    p.add_argument("--dtype", default="fp32,bf16", help="comma-separated autocast dtypes, one process each")
    p.add_argument("--no-app", action="store_true", help="skip the app process (app.py)")
    p.add_argument("--child", default=None, help="(internal) one task in this process, as JSON")
    args = p.parse_args(argv)
    device = common.setup(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a time limit still stops our app server
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps({"write": write, "detector": measure_detector}[spec.pop("task")](spec)))
        return
    names = common.dtype_list(p, args.dtype)
    run_app = not args.no_app
    if run_app and not (common.ROOT / "app.py").is_file():
        p.error("app.py is absent: pass --no-app")
    load_start = os.getloadavg()[0]
    base = {
        "bench": "memory",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "weights": "random, loaded from files like real ones (backbone file + heads checkpoint)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "device": str(device),
            "input_px": args.input_px,
        }
        files = in_child("write", {**spec, "folder": tmp}, args, dict(os.environ))
        env = {**os.environ, "WMOE_BACKBONE_WEIGHTS": files["weights"]}
        spec.update(checkpoint=files["checkpoint"], picture=files["picture"])
        second = Path(tmp) / "checkpoint-b"
        shutil.copytree(files["checkpoint"], second)
        runs = [("detector", name) for name in names]
        runs += [("app", names[0]), ("app_two_checkpoints", names[0])] if run_app else []
        one_app = None
        for process, name in runs:
            if process == "detector":
                result = in_child("detector", {**spec, "dtype": name}, args, env)
                what = "fresh python: Detector.from_pretrained + one predict"
            elif process == "app":
                result = measure_app({**spec, "dtype": name}, env, Path(tmp), [files["checkpoint"]])
                what = "python app.py --checkpoint ... (as deployed) + one Analyze request over HTTP"
                one_app = result["peak_rss_predicted_gb"]
            else:
                result = measure_app(
                    {**spec, "dtype": name}, env, Path(tmp), [files["checkpoint"], str(second)]
                )
                what = "python app.py --checkpoint A --checkpoint B (one backbone) + one Analyze request over HTTP"
                result["ratio_to_one_checkpoint"] = result["peak_rss_predicted_gb"] / one_app
            record = {
                **base,
                "what": "peak_memory",
                "process": process,
                "run": what,
                "dtype": name,
                **common.rounded(result, 3),
            }
            if device.type == "cpu" and process == "app":
                target = TARGET_GB if args.backbone == "ViT-L-14-336" and name == "fp32" else None
                record.update(
                    target_max_gb=target,
                    met=None if target is None else result["peak_rss_predicted_gb"] <= target,
                )
            if process == "app_two_checkpoints":
                record.update(
                    target_max_ratio=TARGET_TWO_CHECKPOINTS,
                    met=result["ratio_to_one_checkpoint"] <= TARGET_TWO_CHECKPOINTS,
                )
            common.emit(record, device, args.out, load_start)


if __name__ == "__main__":
    main()
