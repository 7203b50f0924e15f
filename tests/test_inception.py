"""Inception v3: torchvision state_dict conversion, numerical match with torchvision, heads.

The reference outputs in ``tests/fixtures/inception_v3_reference.npz`` were made by torchvision
0.29.1 itself (``tests/fixtures/make_inception_reference.py``, run in a separate torch venv);
torch is not needed here: the same synthetic weights and input are regenerated with numpy.
"""

from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from pcam_jax import models
from pcam_jax.models import torch_convert as tc
from pcam_jax.models.inception import trainable_mask

FIX = Path(__file__).parent / "fixtures"
TABLE = tc.load_key_table(FIX / "inception_v3_keys.json")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIX / "inception_v3_reference.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def variables_1000():
    model = models.create("inception_v3", num_classes=1000, transform_input=True)
    shapes = jax.eval_shape(
        partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 299, 299, 3))
    )
    return model, shapes


def test_key_table_is_torchvisions():
    keys = [k for k, _, _ in TABLE]
    assert len(keys) == len(set(keys)) == 580
    d = {k: s for k, s, _ in TABLE}
    assert d["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert d["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert d["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert d["AuxLogits.conv1.conv.weight"] == (768, 128, 5, 5)
    assert d["AuxLogits.fc.weight"] == (1000, 768) and d["fc.weight"] == (1000, 2048)
    assert sum(1 for k in keys if k.endswith("num_batches_tracked")) == 96  # BasicConv2d


def test_conversion_covers_every_variable_with_the_right_shape(variables_1000):
    _, shapes = variables_1000
    conv = tc.convert_state_dict(tc.synthetic_state_dict(TABLE, seed=0))
    for coll in ("params", "batch_stats"):
        want = traverse_util.flatten_dict(shapes[coll])
        got = traverse_util.flatten_dict(conv[coll])
        assert set(want) == set(got), set(want) ^ set(got)
        for k, v in want.items():
            assert got[k].shape == v.shape, k
    n_params = sum(
        np.prod(s)
        for k, s, _ in TABLE
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert n_params == 27_161_264  # torchvision inception_v3 with aux head


def test_layout_conversion():
    w = np.arange(2 * 3 * 1 * 7, dtype=np.float32).reshape(2, 3, 1, 7)  # OIHW
    hwio = tc.convert_array("X.conv.weight", w)
    assert hwio.shape == (1, 7, 3, 2) and hwio[0, 5, 2, 1] == w[1, 2, 0, 5]
    lin = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert tc.convert_array("fc.weight", lin)[2, 1] == lin[1, 2]
    assert tc.key_to_path("Mixed_5b.branch_pool.bn.running_var") == (
        "batch_stats",
        "Mixed_5b",
        "branch_pool",
        "bn",
        "var",
    )
    assert tc.key_to_path("Conv2d_1a_3x3.bn.num_batches_tracked") is None


def test_forward_matches_torchvision(reference):
    """Converted synthetic weights give torchvision's logits and aux logits (eval mode)."""
    model = models.create("inception_v3", num_classes=1000, transform_input=True)
    variables = tc.convert_state_dict(tc.synthetic_state_dict(TABLE, seed=0))
    x = jnp.asarray(tc.reference_input(1234))
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda v, x: model.apply(v, x, train=False, return_aux=True))
        logits, aux = fwd(variables, x)
    for got, want in ((logits, reference["logits"]), (aux, reference["aux_logits"])):
        got = np.asarray(got)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() < 1e-4 * scale
        # the sample-dependent part too, not just a shared offset
        dg, dw = got[1] - got[0], want[1] - want[0]
        assert np.abs(dw).max() > 0.1 * scale
        assert np.abs(dg - dw).max() < 1e-4 * scale


@pytest.mark.slow
def test_load_pretrained_new_heads_and_frozen_backbone():
    """2-class model: backbone from the state_dict, fresh heads, gradients only in the heads."""
    model = models.create("inception_v3", transform_input=True, freeze_backbone=True)
    x = jnp.asarray(tc.reference_input(7)[:1])
    variables = models.init_variables(model, jax.random.key(0), x)
    sd = tc.synthetic_state_dict(TABLE, seed=0)
    loaded = tc.load_pretrained(variables, sd)
    np.testing.assert_array_equal(
        loaded["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
        np.transpose(sd["Conv2d_1a_3x3.conv.weight"], (2, 3, 1, 0)),
    )
    np.testing.assert_array_equal(
        loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"]
    )
    assert loaded["params"]["fc"]["kernel"].shape == (2048, 2)

    def loss(params):
        (lo, aux), upd = model.apply(
            {"params": params, "batch_stats": loaded["batch_stats"]},
            x,
            train=True,
            return_aux=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(1)},
        )
        return jnp.sum(lo**2) + jnp.sum(aux**2), upd

    # checked in numpy: jnp op by op compiles a program per leaf shape (hundreds here)
    grads, upd = jax.device_get(jax.jit(jax.grad(loss, has_aux=True))(loaded["params"]))
    flat = traverse_util.flatten_dict(grads)
    mask = traverse_util.flatten_dict(trainable_mask(grads))
    assert any(mask.values()) and not all(mask.values())
    for k, g in flat.items():
        nz = float(np.abs(g).max()) > 0
        assert nz == mask[k], k
    # frozen backbone: batch norm in inference mode, running statistics unchanged
    same = jax.tree.map(
        lambda a, b: bool(np.all(a == np.asarray(b))), upd["batch_stats"], loaded["batch_stats"]
    )
    assert all(jax.tree.leaves(same))
    opt = optax.masked(optax.sgd(0.1), trainable_mask(loaded["params"]))
    assert opt.init(loaded["params"]) is not None


def test_bad_state_dict_is_rejected():
    model = models.create("inception_v3")
    variables = jax.eval_shape(
        partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 299, 299, 3))
    )
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    sd = tc.synthetic_state_dict(TABLE, seed=0)
    broken = dict(sd)
    del broken["Mixed_6c.branch7x7_1.conv.weight"]
    with pytest.raises(KeyError):
        tc.load_pretrained(variables, broken)
    wrong = dict(sd)
    wrong["Mixed_6c.branch7x7_1.conv.weight"] = np.zeros((160, 768, 3, 3), np.float32)
    with pytest.raises(ValueError):
        tc.load_pretrained(variables, wrong)
    with pytest.raises(KeyError):
        tc.key_to_path("Mixed_6c.branch7x7_1.depthwise.weight")


def test_is_a_linen_module_and_aux_needs_299():
    model = models.create("inception_v3")
    assert isinstance(model, nn.Module)
    with pytest.raises(ValueError, match="299"):
        jax.eval_shape(
            partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 150, 150, 3))
        )
    small = models.create("inception_v3", aux_logits=False)
    out = jax.eval_shape(
        lambda: small.init_with_output(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))[0]
    )
    assert out.shape == (1, 2)
