"""Model zoo: API, shapes, parameter matching and the equivariance contract.

Contract: for every element g of a model's group, logits(g x) == logits(x) to ~1e-5 relative,
in eval mode AND in train mode (batch-norm batch statistics; dropout ACTIVE with the same rng,
which is exact because dropout drops whole feature maps / acts after the invariant pooling).
Intermediate group feature maps transform by L_g (rotation/mirror + group-axis permutation).
Negative control: the plain models fail the same check (and p4 models fail it for mirrors).
"""

from functools import cache, partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax import models
from pcam_jax.equivariant import groups as G
from pcam_jax.equivariant.layers import GroupConv, LiftingConv

RTOL = 1e-5
# the group CNNs trained from scratch (the transfer models have their own tests:
# test_inception.py, test_efficientnet.py)
CNN_NAMES = [n for n in models.names() if n != "inception_v3" and "efficientnet" not in n]
# CPU-sized variants
SMALL = {
    "cnn": {"width_multiplier": 0.25, "dense_features": 16},
    "allcnn": {"width_multiplier": 0.1},
    "densenet": {"growth_rate": 4, "depth": 1, "stem_features": 8},
    "resnet": {"widths": (3, 4, 4, 6), "blocks": (1, 2, 1, 1), "dropout_rate": 0.3},
    "resnet_valid": {"widths": (3, 4, 4, 6), "dropout_rate": 0.3},
}


def small(name):
    fam = next(k for k in sorted(SMALL, key=len, reverse=True) if name.endswith(k))
    return models.create(name, **SMALL[fam])


pytestmark = pytest.mark.usefixtures("highest_precision")


def images(n=2, size=96, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def transformed_stack(x):
    """(8, N, H, W, C): x under the 8 elements of p4m (the first 4 are p4)."""
    return jnp.stack([G.transform_plane(x, "p4m", g) for g in range(8)])


def numpy_variables(model, x, seed=0):
    """Random variables filled with numpy (He-scaled kernels, non-trivial BN affine), and
    running statistics calibrated on ``x`` then perturbed: fast (``model.init`` compiles
    every RNG call, ~1 s each on this CPU) and keeps eval-mode activations alive."""
    shapes = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), s.shape)
        elif name == "scale":
            v = rng.uniform(0.7, 1.3, s.shape)
        else:
            v = rng.normal(0.0, 0.1, s.shape)
        return jnp.asarray(v, jnp.float32)

    params = jax.tree_util.tree_map_with_path(fill, shapes["params"])
    zero_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"])
    # one compiled program: run op by op, the first model of each kind spent 5-15 s compiling
    # each primitive for its shapes
    calibration = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))
    _, upd = calibration(
        {"params": params, "batch_stats": zero_stats}, x, rngs={"dropout": jax.random.key(0)}
    )
    mom = 0.9  # new = mom * old + (1 - mom) * batch; old = 0  =>  batch = new / (1 - mom)

    def calibrate(path, v):
        v = v / (1 - mom)
        wiggle = rng.uniform(0.8, 1.25, v.shape) if path[-1].key == "var" else 1.0
        return jnp.asarray(v * wiggle, jnp.float32)

    stats = jax.tree_util.tree_map_with_path(calibrate, upd["batch_stats"])
    return {"params": params, "batch_stats": stats}


@cache
def small_variables(name):
    """``numpy_variables(small(name), images())``, made once per model: the eval- and the
    train-mode contract and the feature-map check read the same variables (each call compiles
    a calibration program, 2-3 s on the 2-core machine). Do not modify the result."""
    return numpy_variables(small(name), images())


def all_logits(name, train):
    """Logits (8, N, 2) and updated batch stats for the 8 transformed copies of one batch."""
    model = small(name)
    variables = small_variables(name)

    def one(xx):
        if train:
            y, upd = model.apply(
                variables,
                xx,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            return y, upd["batch_stats"]
        return model.apply(variables, xx, train=False), variables["batch_stats"]

    return jax.jit(jax.vmap(one))(transformed_stack(images()))


def invariance_errors(logits):
    ref = np.asarray(logits[0], np.float64)
    scale = np.abs(ref).max()
    assert scale > 1e-6 and np.isfinite(ref).all()
    return [float(np.abs(np.asarray(y) - ref).max() / scale) for y in logits]


def test_names_and_create():
    assert set(models.names()) == {
        "cnn",
        "p4cnn",
        "p4mcnn",
        "allcnn",
        "p4allcnn",
        "p4mallcnn",
        "densenet",
        "p4densenet",
        "p4mdensenet",
        "resnet",
        "p4resnet",
        "p4mresnet",
        "resnet_valid",
        "p4resnet_valid",
        "p4mresnet_valid",
        "inception_v3",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "p4_efficientnet_lite0",
        "p4m_efficientnet_lite0",
    }
    for n in models.names():
        assert isinstance(models.create(n), nn.Module)
    assert models.create("p4mdensenet", growth_rate=3).growth_rate == 3
    with pytest.raises(ValueError):
        models.create("resnet50")


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_equivariance_contract(name, train):
    logits, stats = all_logits(name, train)
    assert logits.shape == (8, 2, 2) and logits.dtype == jnp.float32
    errs = invariance_errors(logits)
    group = models.GROUP_OF[name]
    n = G.group_order(group)
    if group == "z2":  # negative control: the plain model is not invariant
        assert max(errs[1:]) > 1e-3, errs
    else:
        assert max(errs[:n]) < RTOL, errs
        if n == 4:  # p4 models are not mirror invariant
            assert max(errs[4:]) > 1e-3, errs
        if train:  # batch statistics are invariant too
            for leaf in jax.tree.leaves(stats):
                ref = np.asarray(leaf[0])
                for g in range(n):
                    np.testing.assert_allclose(leaf[g], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["p4cnn", "p4mcnn", "p4mallcnn", "p4mdensenet", "cnn", "p4resnet", "p4mresnet", "resnet"],
)
def test_intermediate_feature_maps_transform_by_the_regular_action(name):
    model = small(name)
    group = models.GROUP_OF[name]
    x = images(1)
    variables = small_variables(name)

    def feats(xx):
        _, st = model.apply(
            variables,
            xx,
            capture_intermediates=lambda m, _: isinstance(m, (LiftingConv, GroupConv)),
            mutable=["intermediates"],
        )
        return {k: v["__call__"][0] for k, v in st["intermediates"].items()}

    f = jax.jit(feats)
    base = f(x)
    assert len(base) >= 3
    worst = 0.0
    for g in range(1, 8 if group != "p4" else 4):
        got = f(G.transform_plane(x, "p4m", g))
        for k, y in base.items():
            want = (
                G.transform_group_features(y, group, g)
                if group != "z2"
                else G.transform_plane(y, "p4m", g)
            )
            err = float(jnp.max(jnp.abs(got[k] - want)) / jnp.max(jnp.abs(want)))
            worst = max(worst, err)
    if group == "z2":
        assert worst > 1e-3
    else:
        assert worst < RTOL


@pytest.mark.parametrize("family", ["cnn", "allcnn", "densenet"])
def test_full_size_models_trace_and_are_parameter_matched(family):
    """Default (paper-size) models trace at 96x96 (geometry rule holds) with matched params."""
    counts = {}
    for prefix in ("", "p4", "p4m"):
        model = models.create(prefix + family)
        shapes = jax.eval_shape(
            partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 96, 96, 3))
        )
        counts[prefix] = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
        out = jax.eval_shape(partial(model.apply, train=False), shapes, jnp.zeros((3, 96, 96, 3)))
        assert out.shape == (3, 2)
    for prefix in ("p4", "p4m"):
        assert 0.7 < counts[prefix] / counts[""] < 1.3, counts


def test_densenet_growth_defaults():
    assert [models.create(n).growth_rate for n in ("densenet", "p4densenet")] == [None, None]
    from pcam_jax.models.densenet import DEFAULT_GROWTH

    assert DEFAULT_GROWTH == {"z2": 26, "p4": 13, "p4m": 9}


def test_train_step_reduces_loss():
    """The group model learns: a few SGD steps on a fixed batch reduce the loss."""
    import optax

    model = small("p4mcnn")
    x = images(8, seed=5)
    y = jnp.array([0, 1] * 4)
    variables = numpy_variables(model, x)
    opt = optax.adam(1e-2)
    params, stats = variables["params"], variables["batch_stats"]
    state = opt.init(params)

    @jax.jit
    def step(params, stats, state, key):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, state = opt.update(g, state)
        return optax.apply_updates(params, u), upd["batch_stats"], state, loss

    losses = []
    for i in range(15):
        params, stats, state, loss = step(params, stats, state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_init_variables_matches_model_init():
    """``models.init_variables`` (unoptimised compile on CPU) gives model.init's variables."""
    model = models.create("p4cnn", base_widths=(4,), convs_per_stage=1, dense_features=4)
    x = jnp.zeros((1, 16, 16, 3))
    want = jax.jit(partial(model.init, train=False))(jax.random.key(3), x)
    got = models.init_variables(model, jax.random.key(3), (1, 16, 16, 3))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert float(jnp.std(got["params"]["conv0_0"]["kernel"])) > 0.1


@pytest.mark.parametrize("name", ["p4mresnet", "p4resnet", "resnet"])
def test_resnet_centre_crop_and_centre_head_keep_the_contract(name):
    """input_crop (symmetric) and the "mean+centre" head keep exact invariance (negative
    control: the plain model); an asymmetric crop is refused."""
    model = models.create(
        name, widths=(2, 3, 3, 4), input_crop=64, head_pool="mean+centre", dropout_rate=0.2
    )
    x = images()
    variables = numpy_variables(model, x)
    logits = jax.jit(jax.vmap(lambda xx: model.apply(variables, xx, train=False)))(
        transformed_stack(x)
    )
    errs = invariance_errors(logits)
    n = G.group_order(models.GROUP_OF[name])
    if n == 1:
        assert max(errs[1:]) > 1e-3, errs
    else:
        assert max(errs[:n]) < RTOL, errs
    # the head concatenates the global and the centre means of the last stage's 4 features
    assert variables["params"]["classifier"]["kernel"].shape == (2 * 4, 2)
    with pytest.raises(ValueError, match="input_crop=63"):
        models.create(name, widths=(2, 2, 2, 2), input_crop=63).init(jax.random.key(0), x)
