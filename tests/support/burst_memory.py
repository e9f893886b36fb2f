"""The demo's resident memory after each of several bursts of concurrent requests, in a process of its own.

    python tests/support/burst_memory.py < spec.json     # {"checkpoint": ..., "requests": [[path, name]...],
                                                         #  "bursts": N, "downloads": folder}

Serves the checkpoint as `python app.py --concurrency 4` would, sends every request from each of 4
clients at once, N times, and prints one JSON line: {"mb": [resident MB after each burst]}. A process of
its own, because in the test session's process the other tests' servers, caches and threads move the
numbers by tens of MB from one run to the next.
"""

import ctypes
import gc
import json
import sys
from pathlib import Path

from gradio_client import Client, handle_file

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import demo.models as demo_models  # noqa: E402
from support.app_server import serve  # noqa: E402  (the path above first)


def resident_mb() -> float:
    """This process's resident memory in use, after garbage collection and after handing glibc's free arena
    pages back (it keeps them per thread otherwise, and gradio runs every request on a worker thread, so
    plain RSS also counts memory that is merely free)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    [line] = [x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def main() -> None:
    spec = json.load(sys.stdin)
    detectors, _, _ = demo_models.load_models(spec["checkpoint"], baseline="tiny")
    demo, url = serve(next(iter(detectors.values())), None, concurrency=4)
    try:
        clients = [
            Client(url, verbose=False, download_files=str(Path(spec["downloads"]) / f"user{i}"))
            for i in range(4)
        ]
        mb = []
        for _ in range(spec["bursts"]):
            jobs = [
                c.submit(handle_file(path), name, 0.5, 0.5, "fixed", False, api_name="/analyze")
                for c in clients
                for path, name in spec["requests"]
            ]
            for job in jobs:
                job.result(timeout=300)
            mb.append(resident_mb())
    finally:
        demo.close()
    print(json.dumps({"mb": mb}))


if __name__ == "__main__":
    main()
