"""Group math: tables, actions, kernel expansion, pooling, group BN and the geometry rule."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax.equivariant import groups as G
from pcam_jax.runtime.xla_options import CPU_COMPILER_OPTIONS, DISABLE_ENV, compiler_options
from tests.helpers import equivariance_error, normal_array, rel_err

RTOL = 1e-5
GROUPS = ["p4", "p4m"]


pytestmark = pytest.mark.usefixtures("highest_precision")


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize("group", G.GROUPS)
def test_cayley_table_is_a_group(group):
    t = G.cayley_table(group)
    n = G.group_order(group)
    assert t.shape == (n, n)
    assert np.array_equal(t[0], np.arange(n)) and np.array_equal(t[:, 0], np.arange(n))
    for row in t:  # Latin square: each element once per row and column
        assert sorted(row) == list(range(n))
    for a, b, c in itertools.product(range(n), repeat=3):
        assert t[t[a, b], c] == t[a, t[b, c]]
    inv = G.inverses(group)
    assert all(t[a, inv[a]] == 0 and t[inv[a], a] == 0 for a in range(n))


def test_p4_is_the_rotation_subgroup_of_p4m():
    assert np.array_equal(G.cayley_table("p4m")[:4, :4], G.cayley_table("p4"))
    assert np.array_equal(G.elements("p4m")[:4], G.elements("p4"))
    # p4 is abelian, p4m is not
    t4, t8 = G.cayley_table("p4"), G.cayley_table("p4m")
    assert np.array_equal(t4, t4.T) and not np.array_equal(t8, t8.T)


@pytest.mark.parametrize("group", GROUPS)
def test_plane_action_is_a_faithful_homomorphism(group):
    x = np.arange(5 * 5).reshape(1, 5, 5, 1)
    t = G.cayley_table(group)
    n = G.group_order(group)
    images = [G.transform_plane(x, group, g) for g in range(n)]
    assert len({im.tobytes() for im in images}) == n  # all elements act differently
    for a, b in itertools.product(range(n), repeat=2):
        lhs = G.transform_plane(G.transform_plane(x, group, b), group, a)
        assert np.array_equal(lhs, images[t[a, b]])
    # element (0, 1) is a quarter turn, (1, 0) a mirror of the width axis
    assert np.array_equal(images[1], np.rot90(x, 1, axes=(1, 2)))
    if group == "p4m":
        assert np.array_equal(images[4], x[:, :, ::-1])


@pytest.mark.parametrize("group", GROUPS)
def test_regular_action_is_a_homomorphism(group):
    n = G.group_order(group)
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 3 * n))
    t = G.cayley_table(group)
    for a, b in itertools.product(range(n), repeat=2):
        lhs = G.transform_group_features(G.transform_group_features(x, group, b), group, a)
        assert np.array_equal(lhs, G.transform_group_features(x, group, t[a, b]))


def test_unknown_group():
    with pytest.raises(ValueError):
        G.group_order("p6")


# ------------------------------------------------------------------ kernel expansion


def naive_lift(w, group):
    """Independent reference: loop over g and stack T_g w (np.rot90 / flip)."""
    n = G.group_order(group)
    outs = []
    for m, r in G.elements(group):
        k = np.asarray(w)
        if m:
            k = k[:, ::-1]
        outs.append(np.rot90(k, r, axes=(0, 1)))
    return np.stack(outs, axis=-1).reshape(*w.shape[:3], w.shape[3] * n)


def naive_expand(w, group):
    """Reference: W_g(q, c, h) = w(T_g^-1 q, c, g^-1 h), by explicit loops."""
    n = G.group_order(group)
    t, inv = G.cayley_table(group), G.inverses(group)
    k, _, cin, _, cout = w.shape
    w = np.asarray(w)
    out = np.zeros((k, k, cin, n, cout, n), w.dtype)
    for g, (m, r) in enumerate(G.elements(group)):
        sp = w[:, ::-1] if m else w
        sp = np.rot90(sp, r, axes=(0, 1))
        for h in range(n):
            out[:, :, :, h, :, g] = sp[:, :, :, t[inv[g], h], :]
    return out.reshape(k, k, cin * n, cout * n)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_kernel_expansion_matches_naive_reference(group, k):
    n = G.group_order(group)
    w = normal_array((k, k, 2, 3))
    np.testing.assert_array_equal(G.lift_kernel(w, group), naive_lift(w, group))
    w2 = normal_array((k, k, 2, n, 3))
    np.testing.assert_array_equal(G.expand_group_kernel(w2, group), naive_expand(w2, group))


def test_named_expansions():
    w = normal_array((3, 3, 2, 5))
    assert G.lift_p4_kernel(w).shape == (3, 3, 2, 20)
    assert G.lift_p4m_kernel(w).shape == (3, 3, 2, 40)
    assert G.expand_p4_kernel(normal_array((3, 3, 2, 4, 5))).shape == (3, 3, 8, 20)
    assert G.expand_p4m_kernel(normal_array((3, 3, 2, 8, 5))).shape == (3, 3, 16, 40)
    with pytest.raises(ValueError):
        G.expand_group_kernel(normal_array((3, 3, 2, 4, 5)), "p4m")


# ------------------------------------------------------------------ equivariance of the ops


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(
    "size,k,stride,padding",
    [
        (9, 3, 1, "SAME"),
        (12, 3, 1, "SAME"),
        (12, 4, 2, "SAME"),
        (11, 3, 2, "SAME"),
        (12, 1, 1, "VALID"),
        (12, 2, 2, "VALID"),
    ],
)
def test_lifting_and_group_conv_equivariance(group, size, k, stride, padding):
    n = G.group_order(group)
    x = normal_array((2, size, size, 3))
    w1 = normal_array((k, k, 3, 4), 1)
    w2 = normal_array((3, 3, 4, n, 5), 2)
    lift = lambda v: G.lifting_conv(v, w1, group, stride, padding)  # noqa: E731
    assert equivariance_error(lift, x, group, False, "group") < RTOL
    h = lift(x)
    gconv = lambda v: G.group_conv(v, w2, group, 1, "SAME")  # noqa: E731
    assert equivariance_error(gconv, h, group, True, "group") < RTOL


@pytest.mark.parametrize(
    "h, w, k, stride, padding",
    [
        (9, 9, 3, 1, "SAME"),
        (8, 10, 3, 1, "VALID"),
        (7, 7, 1, 1, "SAME"),
        (10, 10, 4, 1, "SAME"),
        (6, 6, 3, 1, ((2, 0), (1, 3))),
        (6, 6, 3, 1, 2),
        (10, 10, 4, 2, "SAME"),  # strided
    ],
)
def test_conv_with_cpu_compiler_options_matches_xla_default(h, w, k, stride, padding):
    """``conv`` and its gradients compiled with ``xla_options.compiler_options()`` (YNNPACK on
    CPU) equal XLA's default compilation of the same convolution."""
    x = normal_array((2, h, w, 5))
    ker = normal_array((k, k, 5, 7), 1)

    def loss(x, ker):
        return jnp.sum(jnp.sin(G.conv(x, ker, stride, padding)))

    f = jax.value_and_grad(loss, (0, 1))
    want = jax.jit(f)(x, ker)
    got = jax.jit(f, compiler_options=compiler_options())(x, ker)
    assert rel_err(got[0], want[0]) < 1e-5
    for a, b in zip(got[1], want[1], strict=True):
        assert rel_err(a, b) < 1e-5


def test_compiler_options_per_backend(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS
    assert compiler_options("gpu") is None
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert compiler_options("cpu") is None


@pytest.mark.parametrize("shape", [(2, 6, 6, 5), (3, 7, 5, 4), (37, 3), (1, 1, 1, 2)])
def test_channel_sum_and_channel_affine_equal_plain_expressions(shape):
    """The two-stage reductions give the plain sums, values and gradients."""
    x = normal_array(shape)
    c = shape[-1]
    mul, shift = normal_array((c,), 1), normal_array((c,), 2)
    axes = tuple(range(len(shape) - 1))
    assert rel_err(G.channel_sum(x), jnp.sum(x, axis=axes)) < 1e-6

    def plain(x, mul, shift):
        return jnp.sum(jnp.sin(x * mul + shift))

    def staged(x, mul, shift):
        return jnp.sum(jnp.sin(G.channel_affine(x, mul, shift)))

    opts = compiler_options()
    want = jax.jit(jax.value_and_grad(plain, (0, 1, 2)))(x, mul, shift)
    got = jax.jit(jax.value_and_grad(staged, (0, 1, 2)), compiler_options=opts)(x, mul, shift)
    assert rel_err(got[0], want[0]) < 1e-6
    for a, b in zip(got[1], want[1], strict=True):
        assert rel_err(a, b) < 1e-5
    g = jax.grad(lambda x: jnp.sum(jnp.cos(x) * G.channel_sum(x)))(x)
    g_want = jax.grad(lambda x: jnp.sum(jnp.cos(x) * jnp.sum(x, axis=axes)))(x)
    assert rel_err(g, g_want) < 1e-5


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("window,stride,padding", [(2, 2, "VALID"), (3, 3, 0), (2, 2, "SAME")])
def test_tiled_pooling_equals_reduce_window(kind, window, stride, padding):
    """Pooling whose windows tile the map (a reshape + reduction) equals ``lax.reduce_window``:
    values, and gradients on an input without ties."""
    x = normal_array((2, 6, 6, 3))
    init, op = (-jnp.inf, jax.lax.max) if kind == "max" else (0.0, jax.lax.add)
    pool = G.max_pool if kind == "max" else G.avg_pool
    pad = G._lax_padding(padding)
    pad = pad if isinstance(pad, str) else [(0, 0), *pad, (0, 0)]

    def ref(x):
        s = jax.lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), pad)
        return s if kind == "max" else s / window**2

    assert rel_err(pool(x, window, stride, padding), ref(x)) < 1e-6
    w = normal_array(ref(x).shape, 1)
    g = jax.grad(lambda x: jnp.sum(w * pool(x, window, stride, padding)))(x)
    assert rel_err(g, jax.grad(lambda x: jnp.sum(w * ref(x)))(x)) < 1e-6


@pytest.mark.parametrize("group", GROUPS)
def test_wrong_permutation_and_wrong_expansion_fail(group):
    """Negative controls: the check must catch a wrong group law or a missing permutation."""
    n = G.group_order(group)
    x = normal_array((2, 9, 9, 2 * n))
    w = normal_array((3, 3, 2, n, 3), 3)
    y = G.group_conv(x, w, group)
    t = G.cayley_table(group)
    errs_wrong_law = []
    for g in range(n):
        gx = G.transform_group_features(x, group, g)
        # deliberately wrong: permute the group axis by g h instead of g^-1 h
        yt = G.transform_plane(y, group, g)
        c = yt.shape[-1] // n
        wrong = yt.reshape(2, 9, 9, c, n)[..., t[g]].reshape(yt.shape)
        errs_wrong_law.append(rel_err(G.group_conv(gx, w, group), wrong))
    assert max(errs_wrong_law) > 0.1

    # deliberately wrong expansion: rotate the kernel but do not permute its input group axis
    def no_perm(w):
        lifted = G.lift_kernel(w.reshape(3, 3, 2 * n, 3), group)
        return lifted

    f = lambda v: G.conv(v, no_perm(w))  # noqa: E731
    assert equivariance_error(f, x, group, True, "group") > 0.1


@pytest.mark.parametrize("group", GROUPS)
def test_group_pooling(group):
    n = G.group_order(group)
    x = normal_array((2, 8, 8, 3 * n))
    for reduce in ("max", "mean"):
        f = lambda v, r=reduce: G.group_pool(v, group, r)  # noqa: E731
        assert f(x).shape == (2, 8, 8, 3)
        assert equivariance_error(f, x, group, True, "plane") < RTOL
        for gr, sr in itertools.product(("max", "mean"), repeat=2):
            inv = lambda v, a=gr, b=sr: G.invariant_pool(v, group, a, b)  # noqa: E731
            assert inv(x).shape == (2, 3)
            assert equivariance_error(inv, x, group, True, "invariant") < RTOL
    np.testing.assert_allclose(
        G.group_pool(x, group, "max"), np.asarray(x).reshape(2, 8, 8, 3, n).max(-1)
    )


@pytest.mark.parametrize("group", GROUPS)
def test_spatial_pooling_exact_tiling_and_counter_example(group):
    n = G.group_order(group)
    x = normal_array((2, 96, 96, 2 * n))
    for pool in (G.max_pool, G.avg_pool):
        f = lambda v, p=pool: p(v, 2, 2, "VALID")  # noqa: E731
        assert f(x).shape == (2, 48, 48, 2 * n)
        assert equivariance_error(f, x, group, True, "group") < RTOL
        # counter-example: 3x3 windows, stride 2, 'SAME' on an even size pad (0, 1)
        bad = lambda v, p=pool: p(v, 3, 2, "SAME")  # noqa: E731
        assert equivariance_error(bad, x, group, True, "group") > 1e-3


def test_strided_same_conv_on_96_breaks_equivariance():
    """The issue's counter-example: 3x3 stride 2 'SAME' on 96x96 is not equivariant."""
    x = normal_array((1, 96, 96, 3))
    w = normal_array((3, 3, 3, 4), 1)
    f = lambda v: G.lifting_conv(v, w, "p4", 2, "SAME")  # noqa: E731
    assert not G.window_is_equivariant(96, 3, 2, "SAME")
    assert equivariance_error(f, x, "p4", False, "group") > 1e-2
    g = lambda v: G.lifting_conv(v, w, "p4", 2, "SAME")  # same op on an odd size is exact  # noqa: E731
    assert G.window_is_equivariant(95, 3, 2, "SAME")
    assert equivariance_error(g, x[:, :95, :95], "p4", False, "group") < RTOL


def test_geometry_rule_predicts_exactness():
    """Exhaustive: the rule is true exactly when a strided/padded conv is equivariant."""
    w_cache = {}
    agree = 0
    for size, k, s, pad in itertools.product(
        range(5, 11), (1, 2, 3, 4), (1, 2, 3), ("VALID", "SAME", 1)
    ):
        if size + 2 * (pad == 1) < k:
            continue
        x = normal_array((1, size, size, 1), size)
        if k not in w_cache:
            w_cache[k] = normal_array((k, k, 1, 1), 100 + k)
        y = np.asarray(G.conv(x, w_cache[k], s, pad))
        exact = True
        for g in (1, 4):  # quarter turn and mirror generate p4m
            lhs = G.conv(
                G.transform_plane(x, "p4m", g),
                G.transform_plane(w_cache[k], "p4m", g, axes=(0, 1)),
                s,
                pad,
            )
            exact &= rel_err(lhs, G.transform_plane(y, "p4m", g)) < RTOL
        assert exact == G.window_is_equivariant(size, k, s, pad), (size, k, s, pad)
        agree += 1
    assert agree > 100
    assert G.explicit_padding(96, 3, 2, "SAME") == (0, 1)
    assert G.explicit_padding(96, 4, 2, "SAME") == (1, 1)
    with pytest.raises(ValueError):
        G.check_window(96, 3, 2, "SAME")


# ------------------------------------------------------------------ group batch norm


@pytest.mark.parametrize("group", GROUPS)
def test_group_batch_norm(group):
    n = G.group_order(group)
    x = normal_array((4, 6, 6, 3 * n)) * 3.0 + 1.0
    scale, bias = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.0, -1.0, 3.0])
    y, mean, var = G.group_batch_norm(x, scale, bias, group)
    xs = np.asarray(x).reshape(4, 6, 6, 3, n)
    np.testing.assert_allclose(mean, xs.mean((0, 1, 2, 4)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, xs.var((0, 1, 2, 4)), rtol=1e-5)
    ys = np.asarray(y).reshape(4, 6, 6, 3, n)
    np.testing.assert_allclose(ys.mean((0, 1, 2, 4)), bias, atol=1e-5)
    np.testing.assert_allclose(ys.std((0, 1, 2, 4)), scale, rtol=1e-3)
    f = lambda v: G.group_batch_norm(v, scale, bias, group)[0]  # noqa: E731
    assert equivariance_error(f, x, group, True, "group") < RTOL
    # per-(channel, group-copy) statistics would not be shared: the copies differ in mean
    assert np.ptp(xs.mean((0, 1, 2))[0]) > 0
