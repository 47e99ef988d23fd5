"""Optimiser recipe (section 4.1) and the training loop: groups, overfitting, errors."""

import pytest
import torch

from btbnet import BTBNetConfig, ConfigError, build_model
from btbnet.config import from_mapping, to_dict
from btbnet.losses import loss_terms
from btbnet.train import OptimConfig, make_optimizer, train_epoch, train_step

TINY = BTBNetConfig(variant="fast", width=0.0625, scales=(1,), rrnet_steps=1)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(TINY)


def focus_batch(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic defocus: sharp noise on the in-focus half (mask 1), flat colour on the other.

    Even samples are in focus on the left, odd ones on the right.
    images [n, 3, size, size] in [0, 1], masks [n, 1, size, size].
    """
    g = torch.Generator().manual_seed(1)
    images, masks = torch.empty(n, 3, size, size), torch.zeros(n, 1, size, size)
    for i in range(n):
        half = slice(0, size // 2) if i % 2 == 0 else slice(size // 2, size)
        masks[i, 0, :, half] = 1
        sharp = torch.rand(3, size, size, generator=g)
        smooth = (0.45 + 0.1 * torch.rand(3, 1, 1, generator=g)).expand(3, size, size)
        images[i] = torch.where(masks[i].bool(), sharp, smooth)
    return images, masks


def test_defaults_are_the_papers_recipe():
    cfg = OptimConfig()
    assert (cfg.lr_backbone, cfg.lr_new, cfg.momentum, cfg.weight_decay) == (1e-4, 1e-3, 0.9, 5e-4)
    assert cfg.aux_weight == 1.0 and cfg.loss_reduction == "mean"


def test_optimizer_has_two_named_groups_covering_every_parameter_once():
    model = build_model(BTBNetConfig(width=0.0625, scales=(1.0, 0.5), rrnet_steps=2))
    opt = make_optimizer(model, OptimConfig())
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["backbone", "new"]
    assert groups["backbone"]["lr"] == 1e-4 and groups["new"]["lr"] == 1e-3
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter twice
    assert set(ids) == {id(p) for p in model.parameters()}  # none forgotten
    backbone = {id(p) for s in model.streams for p in s.backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    assert {id(p) for p in model.fnet.parameters()} <= {id(p) for p in groups["new"]["params"]}


def test_optimizer_unwraps_a_ddp_like_wrapper():
    class Wrapper(torch.nn.Module):  # DistributedDataParallel exposes the model as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_model()
    opt = make_optimizer(Wrapper(model), OptimConfig(lr_backbone=0.5))
    assert opt.param_groups[0]["lr"] == 0.5
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"lr_backbone": -1e-4}, "lr_backbone"),
        ({"lr_new": float("nan")}, "lr_new"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"aux_weight": -0.5}, "aux_weight"),
        ({"aux_weight": [1.0, "x"]}, "aux_weight"),
        ({"loss_reduction": "max"}, "loss_reduction"),
    ],
)
def test_invalid_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        OptimConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    cfg = OptimConfig(lr_new=0.01, aux_weight=[1.0, 0.5, 0.25], loss_reduction="sum")
    assert cfg.aux_weight == (1.0, 0.5, 0.25)
    assert from_mapping(OptimConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="^lr:"):
        from_mapping(OptimConfig, {"lr": 0.1})


@pytest.fixture()
def one_thread():
    """16-px tensors gain nothing from intra-op threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_overfits_a_synthetic_batch(one_thread):
    model = tiny_model()
    cfg = OptimConfig(lr_backbone=3e-2, lr_new=3e-2)
    opt = make_optimizer(model, cfg)
    images, masks = focus_batch()
    first = train_step(model, images, masks, opt, cfg)
    assert set(first) == {"main", "aux_0", "total"}
    assert first["total"] == pytest.approx(first["main"] + first["aux_0"])
    losses = [first["total"]]
    for step in range(1, 120):
        losses.append(train_step(model, images, masks, opt, cfg, step=step)["total"])
        if losses[-1] <= 0.1 * losses[0]:
            break
    assert losses[-1] <= 0.1 * losses[0], f"loss went {losses[0]:.3f} → {losses[-1]:.3f} in {len(losses)} steps"
    # the learnt map separates the halves
    with torch.no_grad():
        prob = torch.sigmoid(model(images).final)
    assert ((prob > 0.5).float() == masks).float().mean() > 0.95


def test_train_epoch_calls_on_step_and_averages_terms():
    model = tiny_model()
    cfg = OptimConfig()
    opt = make_optimizer(model, cfg)
    images, masks = focus_batch(n=4)
    loader = [(images[:2], masks[:2]), {"image": images[2:], "mask": masks[2:]}, (images, masks)]
    seen = []
    means = train_epoch(model, loader, opt, cfg, on_step=lambda i, t: seen.append((i, t)), max_steps=2)
    assert [i for i, _ in seen] == [0, 1]  # max_steps stops before the third batch
    assert set(means) == {"main", "aux_0", "total"}
    for key in means:
        assert means[key] == pytest.approx((seen[0][1][key] + seen[1][1][key]) / 2)


def test_a_step_changes_the_weights_and_lowers_the_loss_on_its_batch():
    model = tiny_model()
    cfg = OptimConfig(lr_backbone=1e-2, lr_new=1e-2)
    opt = make_optimizer(model, cfg)
    images, masks = focus_batch(n=2)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        val = float(loss_terms(model(images), masks)["total"])
    terms = train_step(model, images, masks, opt, cfg)
    assert val == pytest.approx(terms["total"], rel=1e-5)  # the terms are those before the update
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with torch.no_grad():
        assert float(loss_terms(model(images), masks)["total"]) < val


def test_nan_input_raises_with_the_step_index():
    model = tiny_model()
    cfg = OptimConfig()
    opt = make_optimizer(model, cfg)
    images, masks = focus_batch(n=2)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="step 1"):
        train_epoch(model, [(images, masks), (bad, masks)], opt, cfg)
    opt.zero_grad()
    with pytest.raises(FloatingPointError, match="step 1"):  # the failed step left the weights alone
        train_step(model, bad, masks, opt, cfg, step=1)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # step 0 did update


def test_empty_loader_is_an_error():
    model = tiny_model()
    cfg = OptimConfig()
    with pytest.raises(ValueError, match="loader"):
        train_epoch(model, [], make_optimizer(model, cfg), cfg)



def test_warmup_then_cosine_to_the_floor():
    from btbnet.train import lr_factor

    cfg = OptimConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(cfg, step, total_steps=11) for step in range(11)]
    assert factors[0] == pytest.approx(0.25)  # warm-up 1/4 of the cosine's start (1.0)
    assert factors[1] == pytest.approx(0.48899, abs=1e-5)  # 2/4 × (0.1 + 0.9 · (1 + cos 18°) / 2)
    assert factors[5] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: the mean of 1 and the floor
    assert factors[10] == pytest.approx(0.1)  # the last step sits on the floor
    assert [lr_factor(OptimConfig(), s, 11) for s in (0, 10)] == [1.0, 1.0]  # the paper's constant rates


def test_scheduler_moves_both_groups_and_adamw_keeps_them_apart():
    from btbnet.train import make_scheduler

    model = tiny_model()
    cfg = OptimConfig(optimizer="adamw", lr_backbone=1e-3, lr_new=1e-2, schedule="cosine", min_lr_ratio=0.0)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    scheduler = make_scheduler(opt, cfg, total_steps=3)
    images, masks = focus_batch(n=2)
    lrs = []
    for _ in range(3):
        lrs.append([g["lr"] for g in opt.param_groups])
        train_step(model, images, masks, opt, cfg)
        scheduler.step()
    assert lrs == [pytest.approx([1e-3, 1e-2]), pytest.approx([5e-4, 5e-3]), pytest.approx([0.0, 0.0])]


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    images, masks = focus_batch(n=2)
    steps = {}
    for clip in (None, 1e-3):
        model = tiny_model()
        before = [p.detach().clone() for p in model.parameters()]
        cfg = OptimConfig(lr_backbone=1.0, lr_new=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=clip)
        train_step(model, images, masks, make_optimizer(model, cfg), cfg)
        steps[clip] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item()
    assert steps[1e-3] == pytest.approx(1e-3, rel=1e-3)  # SGD with lr 1: the step is the clipped gradient
    assert steps[None] > 10 * steps[1e-3]
