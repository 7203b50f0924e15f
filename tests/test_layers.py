"""Linen group layers: equivariance (train and eval), shapes, init scale, geometry checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax.equivariant import groups as G
from pcam_jax.equivariant import layers as L
from tests.helpers import equivariance_error, normal_array

RTOL = 1e-5
GROUPS = ["p4", "p4m"]


pytestmark = pytest.mark.usefixtures("highest_precision")


@pytest.mark.parametrize("group", GROUPS)
def test_conv_modules_equivariant_and_shaped(group):
    n = G.group_order(group)
    x = normal_array((2, 12, 12, 3))
    lift = L.LiftingConv(5, 3, group=group)
    vl = lift.init(jax.random.key(0), x)
    vl = jax.tree.map(lambda a: a + 0.1, vl)  # non-zero bias
    assert vl["params"]["kernel"].shape == (3, 3, 3, 5)
    assert vl["params"]["bias"].shape == (5,)
    f = jax.jit(lambda v: lift.apply(vl, v))
    assert f(x).shape == (2, 12, 12, 5 * n)
    assert equivariance_error(f, x, group, in_group=False) < RTOL

    h = f(x)
    gc = L.GroupConv(4, 3, group=group, strides=2, padding="VALID")  # 12 -> 5: (12-3) % 2 != 0
    with pytest.raises(ValueError, match="equivariance"):
        gc.init(jax.random.key(1), h)
    gc = L.GroupConv(4, 4, group=group, strides=2, padding="SAME")  # 4x4/2 pads (1, 1): exact
    vg = gc.init(jax.random.key(1), h)
    assert vg["params"]["kernel"].shape == (4, 4, 5, n, 4)
    vg = jax.tree.map(lambda a: a + 0.1, vg)
    fg = jax.jit(lambda v: gc.apply(vg, v))
    assert fg(h).shape == (2, 6, 6, 4 * n)
    assert equivariance_error(fg, h, group) < RTOL


def test_z2_lifting_conv_is_a_plain_conv():
    x = normal_array((2, 10, 10, 3))
    ours = L.LiftingConv(6, 3, group="z2")
    v = ours.init(jax.random.key(0), x)
    ref = nn.Conv(6, (3, 3), padding="SAME")
    np.testing.assert_allclose(
        ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5
    )  # same param names
    assert isinstance(L.conv_layer(4, 3, "z2", lifting=False), L.LiftingConv)


@pytest.mark.parametrize("group", GROUPS)
def test_init_scaled_for_expanded_fan_in(group):
    n = G.group_order(group)
    x = normal_array((4, 16, 16, 32 * n))
    gc = L.GroupConv(32, 3, group=group, use_bias=False)
    v = gc.init(jax.random.key(0), x)
    fan_in = 3 * 3 * 32 * n
    std = float(jnp.std(v["params"]["kernel"]))
    assert abs(std / np.sqrt(2.0 / fan_in) - 1) < 0.05
    # He init: ReLU features of unit second moment stay at second moment ~2 after the conv
    y = gc.apply(v, nn.relu(x) * np.sqrt(2.0))
    assert 1.0 < float(jnp.mean(y**2)) < 4.0
    lift = L.LiftingConv(16, 3, group=group)
    vl = lift.init(jax.random.key(0), normal_array((1, 8, 8, 64)))
    assert abs(float(jnp.std(vl["params"]["kernel"])) / np.sqrt(2.0 / (9 * 64)) - 1) < 0.05


@pytest.mark.parametrize("group", GROUPS)
def test_group_batch_norm_module(group):
    n = G.group_order(group)
    x = normal_array((4, 8, 8, 3 * n)) * 2.0 + 0.5
    bn = L.GroupBatchNorm(group)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    assert v["params"]["scale"].shape == (3,) and v["batch_stats"]["mean"].shape == (3,)
    v = {
        "params": {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.1, -0.2, 0.3])},
        "batch_stats": v["batch_stats"],
    }

    def train(xx):
        y, upd = bn.apply(v, xx, use_running_average=False, mutable=["batch_stats"])
        return y, upd["batch_stats"]

    y, stats = train(x)
    ys = np.asarray(y).reshape(4, 8, 8, 3, n)
    np.testing.assert_allclose(ys.mean((0, 1, 2, 4)), [0.1, -0.2, 0.3], atol=1e-5)
    assert equivariance_error(lambda xx: train(xx)[0], x, group) < RTOL
    for g in range(n):
        _, s2 = train(G.transform_group_features(x, group, g))
        for k in ("mean", "var"):
            np.testing.assert_allclose(s2[k], stats[k], rtol=1e-5)
    v_eval = {"params": v["params"], "batch_stats": stats}
    f_eval = lambda xx: bn.apply(v_eval, xx, use_running_average=True)  # noqa: E731
    assert equivariance_error(f_eval, x, group) < RTOL


@pytest.mark.parametrize("group", GROUPS)
def test_group_pool_module_and_spatial_pool(group):
    n = G.group_order(group)
    x = normal_array((2, 8, 8, 3 * n))
    gp = L.GroupPool(group, "max")
    assert gp.apply({}, x).shape == (2, 8, 8, 3)
    assert equivariance_error(lambda v: gp.apply({}, v), x, group, out="plane") < RTOL
    assert equivariance_error(lambda v: L.spatial_pool(v, "max"), x, group) < RTOL
    assert equivariance_error(lambda v: L.spatial_pool(v, "avg"), x, group) < RTOL
    with pytest.raises(ValueError):
        L.spatial_pool(x, "max", 3, 2, "SAME")


@pytest.mark.parametrize("group", GROUPS)
def test_group_dropout_same_rng_is_equivariant(group):
    """Train mode with the same dropout rng: whole feature maps are dropped, so exact."""
    n = G.group_order(group)
    x = normal_array((3, 6, 6, 8 * n)) + 3.0  # positive so dropped entries are recognisable
    rng = jax.random.key(3)
    gd = L.GroupDropout(0.5, group)
    f = lambda v: gd.apply({}, v, deterministic=False, rngs={"dropout": rng})  # noqa: E731
    y = np.asarray(f(x)).reshape(3, 6, 6, 8, n)
    kept = y != 0
    assert kept.any() and not kept.all()
    assert (kept == kept[:, :1, :1, :, :1]).all()  # mask per (sample, channel) only
    assert equivariance_error(f, x, group) < RTOL
    np.testing.assert_array_equal(gd.apply({}, x, deterministic=True), x)
    # negative control: element-wise dropout with the same rng is not equivariant
    el = lambda v: nn.Dropout(0.5).apply({}, v, deterministic=False, rngs={"dropout": rng})  # noqa: E731
    assert equivariance_error(el, x, group) > 0.1


def test_group_batch_norm_axis_name_averages_over_devices():
    """With axis_name, statistics over all shards equal those of the whole batch."""
    x = normal_array((4, 6, 6, 2 * 8)) * 2.0 + 1.0
    bn = L.GroupBatchNorm("p4m", axis_name="dev")
    v = L.GroupBatchNorm("p4m").init(jax.random.key(0), x, use_running_average=False)
    whole, upd = L.GroupBatchNorm("p4m").apply(
        v, x, use_running_average=False, mutable=["batch_stats"]
    )

    def shard(xs):
        return bn.apply(v, xs, use_running_average=False, mutable=["batch_stats"])

    sharded, upd_s = jax.vmap(shard, axis_name="dev")(x.reshape(2, 2, 6, 6, 16))
    np.testing.assert_allclose(sharded.reshape(x.shape), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(upd_s["batch_stats"]["var"][0], upd["batch_stats"]["var"], 1e-5)
