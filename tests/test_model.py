"""WMoECLIP: shapes, ranges, switches, frozen backbone, and the multi-layer trap."""

import pytest
import torch
import torch.nn.functional as F
from support.helpers import randomize_heads

from wmoe import WMoECLIP, WMoEConfig
from wmoe.backbone import Backbone


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 104, 104, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    return randomize_heads(WMoECLIP(WMoEConfig.tiny())).eval()


def test_shapes_and_ranges(model, images):
    out = model(images, ["bottle", "screw"], ctds_samples=3)
    cfg = model.config
    L, E = len(cfg.layers), cfg.num_experts
    assert out.anomaly_map.shape == (2, 104, 104)
    assert out.layer_maps.shape == (2, L, 104, 104)
    assert out.image_score.shape == out.cls_score.shape == out.moe_score.shape == (2,)
    assert out.routing_weights.shape == out.expert_scores.shape == (2, E)
    assert out.expert_maps.shape == (2, E, *model.backbone.grid)
    assert out.mu.shape == out.logvar.shape == (2, cfg.latent_dim)
    assert out.uncertainty_map.shape == (2, 104, 104) and (out.uncertainty_map > 0).any()
    for t in (out.anomaly_map, out.layer_maps, out.image_score, out.expert_scores):
        assert t.min() >= 0 and t.max() <= 1
    torch.testing.assert_close(out.routing_weights.sum(-1), torch.ones(2))
    torch.testing.assert_close(out.expert_maps.flatten(2).sum(-1), torch.ones(2, E))


def test_layer_maps_differ(model, images):
    """AnomalyCLIP's four layer maps were identical for a year (tokens stored by reference)."""
    _, taps = model.backbone.encode_image(images)
    out = model(images, ["object"] * 2)
    for i in range(len(taps)):
        for j in range(i + 1, len(taps)):
            assert not torch.allclose(taps[i], taps[j])
            assert (out.layer_maps[:, i] - out.layer_maps[:, j]).abs().max() > 1e-4


def test_taps_match_a_manual_forward(model, images):
    """Each tap equals ln_post + proj of that block's output, computed block by block here."""
    visual = model.backbone.clip.visual
    _, taps = model.backbone.encode_image(images)
    x = visual._embeds(images)
    for k, block in enumerate(visual.transformer.resblocks, start=1):
        x = block(x)
        if k in model.config.layers:
            manual = visual.ln_post(x[:, 1:]) @ visual.proj
            torch.testing.assert_close(taps[model.config.layers.index(k)], manual, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("module", ["ctds", "wcma", "projection", "moe", "routing"])
def test_each_skip_changes_the_output(model, images, module):
    full = model(images, ["bottle"] * 2)
    part = model(images, ["bottle"] * 2, skip={module})
    assert (full.image_score - part.image_score).abs().max() > 1e-5
    if module in ("ctds", "wcma", "projection"):
        assert (full.anomaly_map - part.anomaly_map).abs().max() > 1e-5


@pytest.mark.parametrize("module", ["ctds", "wcma", "projection", "moe"])
def test_config_switch_equals_runtime_skip(model, images, module):
    """A model built without a module computes what the full model computes when skipping it."""
    cfg = model.config.replace(**{f"use_{module}": False})
    small = WMoECLIP(cfg, backbone=model.backbone).eval()
    state = {
        k: v
        for k, v in model.state_dict().items()
        if k in small.state_dict() and not k.startswith("backbone.")
    }
    if module == "ctds":  # the router then takes g alone: drop the latent columns
        state["moe.router.weight"] = state["moe.router.weight"][:, : model.backbone.embed_dim]
    small.load_state_dict(state, strict=False)
    a = small(images, ["bottle"] * 2)
    b = model(images, ["bottle"] * 2, skip={module})
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    if module != "ctds":
        torch.testing.assert_close(a.image_score, b.image_score)


def test_all_off_is_plain_clip_prompt_scoring(images):
    cfg = WMoEConfig.baseline(
        **{
            k: v
            for k, v in WMoEConfig.tiny().to_dict().items()
            if k in ("backbone", "pretrained", "image_size", "layers", "smoothing_sigma")
        }
    )
    model = WMoECLIP(cfg).eval()
    assert model.head_parameters() == {}
    out = model(images, ["bottle"] * 2)
    bb = model.backbone
    text = F.normalize(
        bb.encode_text([cfg.normal_template.format("bottle"), cfg.abnormal_template.format("bottle")]), dim=-1
    )
    g, taps = bb.encode_image(images)
    probs = (F.normalize(g, dim=-1) @ text.t() / cfg.temperature).softmax(-1)[:, 1]
    torch.testing.assert_close(out.image_score, probs)
    patch = (F.normalize(taps[0], dim=-1) @ text.t() / cfg.temperature).softmax(-1)[..., 1]
    grid = patch.unflatten(-1, bb.grid)[:, None]
    expected = F.interpolate(grid, size=(104, 104), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.layer_maps[:, 0], expected, rtol=1e-4, atol=1e-5)
    assert out.routing_weights is None and out.mu is None


def test_truncated_text_equals_full_context(model):
    """Running the text tower only up to the end-of-text token gives CLIP's own encode_text."""
    bb = model.backbone
    ids = bb.tokenizer(["a photo of a damaged bottle", "cable"])
    torch.testing.assert_close(
        bb.encode_text(["a photo of a damaged bottle", "cable"]),
        bb.clip.encode_text(ids),
        rtol=1e-4,
        atol=1e-5,
    )


def test_only_heads_get_gradients_and_backbone_stays_frozen(images):
    model = WMoECLIP(WMoEConfig.tiny())
    model.train()
    assert not model.backbone.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    out = model(images, ["bottle", "nut"])
    (out.image_score.sum() + out.anomaly_map.mean() + out.mu.pow(2).sum()).backward()
    heads = model.head_parameters()
    assert heads and all(p.requires_grad for p in heads.values())
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name
    assert model.prompts.ctx.grad is not None and model.prompts.ctx.grad.abs().sum() > 0
    assert model.moe.router.weight.grad is not None
    opt = torch.optim.SGD(heads.values(), lr=0.1)
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unknown_skip_is_refused(model, images):
    with pytest.raises(ValueError, match="unknown modules"):
        model(images, ["x"] * 2, skip={"wavelets"})


def test_ctds_needs_context_tokens(tmp_path):
    from wmoe import ConfigError

    with pytest.raises(ValueError, match="n_ctx"):
        WMoECLIP(WMoEConfig.tiny(n_ctx=0))
    with pytest.raises(ConfigError, match="use_ctds needs n_ctx > 0"):  # the rule lives in the config
        WMoEConfig.tiny(n_ctx=0)
    path = tmp_path / "config.json"
    path.write_text(WMoEConfig.tiny().to_json().replace('"n_ctx": 4', '"n_ctx": 0'))
    with pytest.raises(ConfigError, match=f"{path}.*use_ctds needs n_ctx > 0"):  # names the file
        WMoEConfig.load(path)


def test_backbone_taps_out_of_range():
    from wmoe import ConfigError

    with pytest.raises(ConfigError, match="exceed"):
        Backbone(WMoEConfig.tiny(layers=(2, 9)))


def test_building_a_model_leaves_the_callers_rng_alone():
    """Construction seeds its own initialisation (config.seed) and gives the caller's RNG back unchanged."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    expected = torch.rand(4)
    torch.set_rng_state(state)
    first = WMoECLIP(WMoEConfig.tiny())
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)
    again, other = WMoECLIP(WMoEConfig.tiny()), WMoECLIP(WMoEConfig.tiny(seed=1))
    for name, value in first.state_dict().items():  # deterministic from config.seed alone
        assert torch.equal(again.state_dict()[name], value), name
    assert not torch.equal(other.moe.query, first.moe.query)
    assert not torch.equal(other.backbone.clip.visual.proj, first.backbone.clip.visual.proj)
