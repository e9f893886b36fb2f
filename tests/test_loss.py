"""The training loss (wmoe/loss.py): every term against values computed by hand."""

import math

import pytest
import torch

from wmoe import WMoECLIP, WMoEConfig, WMoEOutput
from wmoe.loss import LossWeights, dice_loss, focal_loss, wmoe_loss

LN2 = math.log(2.0)


def output(image_score, layer_maps, mu=None, logvar=None, routing=None) -> WMoEOutput:
    maps = torch.as_tensor(layer_maps, dtype=torch.float32)
    score = torch.as_tensor(image_score, dtype=torch.float32)
    return WMoEOutput(
        anomaly_map=maps.mean(1),
        layer_maps=maps,
        image_score=score,
        cls_score=score,
        mu=mu,
        logvar=logvar,
        routing_weights=routing,
    )


def test_focal_at_one_half_is_a_quarter_of_ln2():
    p = torch.full((3, 4, 4), 0.5)
    for target in (torch.zeros(3, 4, 4, dtype=torch.bool), torch.ones(3, 4, 4, dtype=torch.bool)):
        assert focal_loss(p, target, gamma=2.0).item() == pytest.approx(0.25 * LN2, rel=1e-6)


def test_focal_with_gamma_zero_is_binary_cross_entropy():
    p = torch.tensor([[0.9, 0.2], [0.6, 0.05]])
    t = torch.tensor([[True, False], [False, True]])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.05)) / 4
    assert focal_loss(p, t, gamma=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_focal_down_weights_easy_pixels():
    t = torch.tensor([True])
    # p_t = 0.9: (0.1)^2 * -ln 0.9
    assert focal_loss(torch.tensor([0.9]), t).item() == pytest.approx(0.01 * -math.log(0.9), rel=1e-6)


def test_dice_hand_values():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # 4 pixels
    assert dice_loss(mask.float(), mask).item() == pytest.approx(0.0, abs=1e-7)  # perfect: (8 + 1) / (8 + 1)
    assert dice_loss(torch.zeros(1, 4, 4), mask).item() == pytest.approx(
        1 - 1 / 5, rel=1e-6
    )  # 1 - 1 / (0 + 4 + 1)
    half = torch.full((1, 4, 4), 0.5)  # |p| = 8, |p m| = 2: 1 - (4 + 1) / (8 + 4 + 1)
    assert dice_loss(half, mask).item() == pytest.approx(1 - 5 / 13, rel=1e-6)


def test_every_term_and_weight_by_hand():
    # image 0: normal, annotated (all-zero mask); image 1: anomalous without a mask (image term only)
    maps = torch.full((2, 1, 2, 2), 0.5)
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    mu, logvar = torch.ones(2, 2), torch.zeros(2, 2)  # KL = 0.5 * sum(mu^2) = 1 per image
    routing = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # collapsed on expert 0: E * 1^2 - 1 = 1
    w = LossWeights(pixel=2.0, kl=0.1, balance=0.01)
    total, parts = wmoe_loss(
        output([0.5, 0.5], maps, mu, logvar, routing),
        torch.tensor([0, 1]),
        masks,
        torch.tensor([True, False]),
        w,
    )
    focal = 0.25 * LN2
    dice = (1 - 1 / (2 + 0 + 1)) + (1 - (2 * 2 + 1) / (2 + 4 + 1))  # Dice(abnormal, 0) + Dice(normal, 1)
    assert parts["image"].item() == pytest.approx(LN2, rel=1e-6)
    assert parts["focal"].item() == pytest.approx(focal, rel=1e-6)
    assert parts["dice"].item() == pytest.approx(dice, rel=1e-6)
    assert parts["kl"].item() == pytest.approx(1.0, rel=1e-6)
    assert parts["balance"].item() == pytest.approx(1.0, rel=1e-6)
    expected = LN2 + 2.0 * (focal + dice) + 0.1 * 1.0 + 0.01 * 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["total"].item() == pytest.approx(expected, rel=1e-6)


def test_layers_are_summed():
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    one = wmoe_loss(
        output([0.5], torch.full((1, 1, 2, 2), 0.5)), torch.tensor([0]), masks, torch.tensor([True])
    )[1]
    two = wmoe_loss(
        output([0.5], torch.full((1, 2, 2, 2), 0.5)), torch.tensor([0]), masks, torch.tensor([True])
    )[1]
    assert two["focal"].item() == pytest.approx(2 * one["focal"].item(), rel=1e-6)
    assert two["dice"].item() == pytest.approx(2 * one["dice"].item(), rel=1e-6)


def test_images_without_masks_get_the_image_term_only():
    maps = torch.rand(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    total, parts = wmoe_loss(
        output([0.3, 0.8], maps), torch.tensor([0, 1]), masks, torch.tensor([False, False])
    )
    assert parts["focal"].item() == 0 and parts["dice"].item() == 0
    bce = -(math.log(0.7) + math.log(0.8)) / 2
    assert total.item() == pytest.approx(bce, rel=1e-6)
    # one annotated image: the other image's maps get no gradient
    total, _ = wmoe_loss(output([0.3, 0.8], maps), torch.tensor([0, 1]), masks, torch.tensor([True, False]))
    total.backward()
    assert maps.grad[0].abs().sum() > 0
    assert maps.grad[1].abs().sum() == 0


def test_float32_even_from_bf16_inside_autocast():
    maps = torch.full((1, 1, 4, 4), 0.5, dtype=torch.bfloat16)
    out = WMoEOutput(
        anomaly_map=maps.mean(1),
        layer_maps=maps,
        image_score=torch.tensor([0.5], dtype=torch.bfloat16),
        cls_score=torch.tensor([0.5], dtype=torch.bfloat16),
    )
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = wmoe_loss(out, torch.tensor([0]), masks, torch.tensor([True]))
    assert total.dtype == torch.float32
    expected = LN2 + 0.25 * LN2 + (1 - 1 / 9) + (1 - 17 / 25)  # |p| = 8 of 16 pixels
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="kl"):
        LossWeights(kl=-1)
    with pytest.raises(ValueError, match="input size"):
        wmoe_loss(
            output([0.5], torch.full((1, 1, 4, 4), 0.5)),
            torch.tensor([0]),
            torch.zeros(1, 2, 2, dtype=torch.bool),
            torch.tensor([True]),
        )


def test_real_tiny_model_trains_the_heads_only():
    model = WMoECLIP(WMoEConfig.tiny(image_size=48)).train()
    images = torch.randn(2, 3, 48, 48)
    masks = torch.zeros(2, 48, 48, dtype=torch.bool)
    masks[1, 10:20, 10:20] = True
    total, parts = wmoe_loss(
        model(images, ["felt", "nut"]), torch.tensor([0, 1]), masks, torch.tensor([True, True])
    )
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert parts["kl"].item() > 0 and parts["focal"].item() > 0
    total.backward()
    heads = model.head_parameters()
    assert all(
        p.grad is not None for p in heads.values()
    )  # zero-initialised gates give zero grads behind them
    for name in (
        "prompts.ctx",
        "projection.linears.0.weight",
        "ctds.decoder.2.weight",
        "wcma.gate",
        "moe.router.weight",
    ):
        assert heads[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone."))
