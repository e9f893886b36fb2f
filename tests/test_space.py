"""The Space wired to a published checkpoint: `WMOE_CHECKPOINT=ORG/NAME` and a Hub cache holding what
`training.train.publish` pushed; the app starts from it offline, as a Space does after its build."""

import shutil
from pathlib import Path

import gradio as gr
import huggingface_hub
import numpy as np
from support.hubcache import populate_hub_cache

import app
from training import train
from training.model_card import write_card
from wmoe import Detector

REPO = "org/wmoe-clip-repro"


def test_the_space_starts_from_a_pushed_checkpoint_offline(tmp_path, tiny_checkpoint, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run)
    write_card(run, [], REPO)
    cache = tmp_path / "hub"

    def fake_upload(
        directory, repo_id
    ):  # what the Hub would serve back: the pushed files, in its cache layout
        populate_hub_cache(cache, repo_id, {p.name: p for p in Path(directory).iterdir()})
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(train, "upload_checkpoint", fake_upload)
    assert train.publish(run, REPO) == 0

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WMOE_CHECKPOINT", REPO)  # the Space variable
    args = app.parse_args([])
    assert args.checkpoint == [REPO]
    detectors, baseline, notices = app.load_models(args.checkpoint, args.device, args.dtype, args.baseline)
    assert list(detectors) == [REPO] and baseline is not None
    assert not any("could not be loaded" in n for n in notices), notices
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    local = Detector.from_pretrained(run).predict(image, "bottle").score
    assert detectors[REPO].predict(image, "bottle").score == local  # the pushed weights, not others
    demo = app.build_app(detectors, baseline, notices, args.concurrency)
    assert isinstance(demo, gr.Blocks)
    assert any("untrained model" in line for line in app.status_lines(detectors, baseline, notices))
