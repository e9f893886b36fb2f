"""Routing statistics across images (wmoe.routing) and their pictures (wmoe.render)."""

import math

import numpy as np
import pytest
from PIL import Image

from wmoe.render import class_routing_chart, routing_strip
from wmoe.routing import routing_by_class, routing_entropy, summarize_routing


def test_entropy_is_zero_for_one_expert_and_ln_e_for_uniform():
    w = np.array([[1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]])
    np.testing.assert_allclose(routing_entropy(w), [0, math.log(4), math.log(2)], atol=1e-12)


def test_summary_per_class_keeps_the_order_and_means_per_class():
    w = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.2, 0.8]])
    by_class = routing_by_class(w, ["screw", "screw", "nut", "nut"])
    assert list(by_class) == ["screw", "nut"]
    screw, nut = by_class["screw"], by_class["nut"]
    np.testing.assert_allclose(screw.mean_weights, [0.5, 0.5])
    assert screw.images == 2 and screw.entropy == pytest.approx(0) and screw.normalized_entropy == 0
    np.testing.assert_allclose(nut.mean_weights, [0.35, 0.65])
    expected = (math.log(2) - (0.2 * math.log(0.2) + 0.8 * math.log(0.8))) / 2
    assert nut.entropy == pytest.approx(expected) and nut.max_entropy == pytest.approx(math.log(2))
    assert summarize_routing(w).to_dict()["images"] == 4


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 4)), np.ones(4), np.array([[np.nan, 1.0]]), np.array([[-1.0, 2.0]])]
)
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError):
        summarize_routing(bad)


def test_class_names_must_match_the_rows():
    with pytest.raises(ValueError, match="2 routing rows but 1 class names"):
        routing_by_class(np.eye(2), ["a"])


def test_routing_strip_colours_each_expert_on_a_fixed_scale():
    strip = np.asarray(routing_strip(np.array([0.0, 1.0, 0.5]), cell=10, height=6))
    assert strip.shape == (6, 29, 3)
    low, high, mid = strip[0, 2], strip[0, 12], strip[0, 22]
    assert (strip[:, 9] == 255).all()  # the line between experts
    assert tuple(low) != tuple(high) != tuple(mid)
    again = np.asarray(routing_strip(np.array([1.0, 0.0, 0.5]), cell=10, height=6))
    np.testing.assert_array_equal(again[0, 2], high)  # the same weight, the same colour, in any image


def test_class_routing_chart_draws_a_bar_per_class():
    chart = class_routing_chart({"screw": (np.array([0.7, 0.3]), 0.4), "nut": (np.array([0.2, 0.8]), 0.9)})
    assert isinstance(chart, Image.Image) and chart.width == 640
    with pytest.raises(ValueError):
        class_routing_chart({})
