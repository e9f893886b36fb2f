"""The demo names checkpoints distinctly and never by a server path, even when their folders share a name."""

import shutil

import app


def test_two_checkpoint_folders_with_one_name_get_distinct_names_without_a_server_path(
    tiny_checkpoint, tmp_path
):
    x, y = tmp_path / "x" / "ckpt", tmp_path / "y" / "ckpt"
    shutil.copytree(tiny_checkpoint, x)
    shutil.copytree(tiny_checkpoint, y)
    detectors, _, notices = app.load_models([str(x), str(y), str(tmp_path / "z" / "ckpt")])
    assert list(detectors) == ["x/ckpt", "y/ckpt"]  # the menu, JSON and CSV use these names
    assert len(notices) == 1 and "**z/ckpt**" in notices[0]  # z is missing: named without a server path
    assert str(tmp_path) not in notices[0]
    assert detectors["x/ckpt"].model.backbone is detectors["y/ckpt"].model.backbone
