"""The one registry idiom of training/: dataset loaders, synthetic image kinds and defects."""

from __future__ import annotations

import numpy as np
import pytest

from training import synthetic as syn
from training.prepare_data import LOADERS, load_mvtec
from training.registry import Registry


def test_register_keeps_the_target_and_refuses_a_name_twice():
    reg: Registry[object] = Registry("thing")

    @reg.register("a", "b")
    def f():
        return 1

    assert f() == 1 and reg["a"] is reg["b"] is f
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "c" not in reg
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.register("a")(len)
    with pytest.raises(KeyError):
        reg["c"]


def test_public_names_are_views_of_the_registries():
    assert isinstance(LOADERS, Registry) and LOADERS["mvtec"] is LOADERS["mpdd"] is load_mvtec
    assert syn.KINDS == tuple(syn.KIND_REGISTRY) == syn.TEXTURE_KINDS + syn.OBJECT_KINDS
    assert syn.OBJECT_KINDS == ("disc", "part")
    assert (
        syn.DEFECT_KINDS == tuple(syn.DEFECT_REGISTRY) == ("scratch", "crack", "hole", "stain", "cut_paste")
    )


@pytest.mark.parametrize("kind", syn.KINDS)
def test_every_registered_kind_renders_and_takes_every_registered_defect(kind):
    cat = syn.make_category(f"c_{kind}", kind, seed=1)
    img, region = cat.render(0, 40)
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert (region is not None) == cat.is_object == syn.KIND_REGISTRY[kind].is_object
    for defect in syn.DEFECT_KINDS:
        out, mask = cat.render_defect(1, 40, defect)
        assert mask.any() and out.shape == img.shape
