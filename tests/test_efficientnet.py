"""EfficientNet-Lite0 transfer: the torch-free checkpoint reader, the converter's refusals,
``init_from`` by package name and by file, the real ImageNet weights on a real photograph, the
view-pooled invariance (with its negative control), the optimizer's frozen and slower
parameters, and a short fine-tuning run that learns.

The port's equality with the PyTorch reference implementation runs in the reference env
(``bench/crosscheck_efficientnet.py``), as the escnn cross-check does: skipped here, with the
reason, when that env is absent.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from pcam_jax import models, train
from pcam_jax.config import load_config_file
from pcam_jax.equivariant import groups as G
from pcam_jax.models import pretrained, torch_checkpoint
from pcam_jax.train.optim import make_optimizer
from tests.helpers import REPO

REF_PYTHON = os.environ.get("PCAM_ESCNN_PYTHON") or (
    str(REPO / ".venv-escnn/bin/python") if (REPO / ".venv-escnn/bin/python").exists() else None
)


@pytest.fixture(scope="module")
def state_dict():
    """The packaged ImageNet checkpoint (legacy .pth layout), read without torch."""
    return torch_checkpoint.read_state_dict(pretrained.resolve("efficientnet-lite0"))


@pytest.fixture(scope="module")
def lite0_variables():
    """A 2-class efficientnet_lite0 and its freshly initialised variables."""
    model = models.create("efficientnet_lite0")
    return model, models.init_variables(model, jax.random.key(0), (2, 96, 96, 3))


def test_gradcam_defaults_to_a_depthwise_convolution_at_a_quarter_of_the_patch(lite0_variables):
    """The depthwise convolutions are the network's spatial layers: Grad-CAM's default layer is
    the last one whose map is 24x24 at 96x96, not the stem."""
    from pcam_jax.explain.attribution import default_gradcam_layer, feature_layers

    model, variables = lite0_variables
    layer = default_gradcam_layer(model, variables)
    assert layer.endswith("depthwise_conv") and layer != "conv_stem", layer
    shapes = {e["layer"]: e["shape"] for e in feature_layers(model, variables)}
    assert shapes[layer][:2] == (24, 24)


def test_the_packaged_checkpoint_reads_without_torch(state_dict):
    assert "torch" not in sys.modules
    assert len(state_dict) == 296
    params = sum(v.size for k, v in state_dict.items() if "running" not in k and "num_" not in k)
    assert params == 4_652_008
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64


def test_the_reader_refuses_code_and_junk(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "exploit.pth"
    bad.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=r"exploit\.pth.*refusing to unpickle global"):
        torch_checkpoint.read_state_dict(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        torch_checkpoint.read_state_dict(junk)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_checkpoint.read_state_dict(tmp_path / "missing.pth")


def test_init_from_by_name_by_pth_and_by_npz_agree(state_dict, lite0_variables, tmp_path):
    model, variables = lite0_variables
    by_name = pretrained.load_into("efficientnet_lite0", variables, "efficientnet-lite0")
    path = pretrained.resolve("efficientnet-lite0")
    by_file = pretrained.load_into("efficientnet_lite0", variables, path)
    np.savez(tmp_path / "lite0.npz", **state_dict)
    by_npz = pretrained.load_into("efficientnet_lite0", variables, tmp_path / "lite0.npz")
    for other in (by_file, by_npz):
        jax.tree.map(np.testing.assert_array_equal, by_name, other)
    # the backbone is ImageNet's, laid out for flax; the 2-class head stays as initialised
    np.testing.assert_array_equal(
        by_name["params"]["blocks_3"]["depthwise_conv"]["kernel"],
        state_dict["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        by_name["batch_stats"]["blocks_3"]["bn1"]["var"],
        state_dict["_blocks.3._bn1.running_var"],
    )
    np.testing.assert_array_equal(
        by_name["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"]
    )
    with pytest.raises(ValueError, match="fits the models.*not 'resnet'"):
        pretrained.load_into("resnet", variables, "efficientnet-lite0")
    with pytest.raises(FileNotFoundError, match="no such file, and not a packaged weights name"):
        pretrained.resolve(tmp_path / "nope.pth")


def test_the_converter_refuses_missing_extra_and_misshapen_keys(state_dict, lite0_variables):
    _, variables = lite0_variables
    missing = {k: v for k, v in state_dict.items() if not k.startswith("_blocks.7._bn2")}
    with pytest.raises(ValueError, match=r"model variables not in it: .*blocks_7/bn2"):
        pretrained.load_efficientnet(variables, missing)
    extra = {**state_dict, "_blocks.16._project_conv.weight": np.zeros((8, 8, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"keys the model does not have: _blocks\.16\._project"):
        pretrained.load_efficientnet(variables, extra)
    wrong = {**state_dict, "_conv_head.weight": np.zeros((1280, 320, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"shapes differ: params/conv_head/kernel model"):
        pretrained.load_efficientnet(variables, wrong)
    lite1 = models.create("efficientnet_lite1")
    v1 = jax.eval_shape(lambda: lite1.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3))))
    with pytest.raises(ValueError, match="model variables not in it"):
        pretrained.load_efficientnet(v1, state_dict)


def test_real_weights_name_a_real_photograph():
    """ImageNet logits of the packaged weights on matplotlib's photograph of Grace Hopper in
    uniform: class 652, "military uniform" (the classic check of an ImageNet port)."""
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((224, 224))
    u = np.asarray(img, np.float32)[None] / 255.0
    x = (u - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    model = models.create("efficientnet_lite0", num_classes=1000)
    fresh = models.init_variables(model, jax.random.key(0), (1, 224, 224, 3))
    v = pretrained.load_into("efficientnet_lite0", fresh, "efficientnet-lite0")
    x = jnp.asarray(x, jnp.float32)
    apply = jax.jit(model.apply)  # one program for both sets of weights
    logits = np.asarray(apply(v, x))[0]
    assert int(np.argmax(logits)) == 652
    # negative control: without the ImageNet weights the answer is anything but a confident 652
    p = jax.nn.softmax(apply(fresh, x))[0]
    assert float(p[652]) < 0.05


def test_transform_input_maps_imagenet_normalisation_to_the_weights_scaling(lite0_variables):
    """What the stem sees (``prepare_input``, the first thing ``features`` does)."""
    model, variables = lite0_variables
    u = np.random.default_rng(0).uniform(0, 1, size=(2, 64, 64, 3)).astype(np.float32)
    x_tv = jnp.asarray((u - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    x_tf = (255.0 * u - 127.0) / 128.0
    seen = model.apply(variables, x_tv.astype(jnp.float32), method="prepare_input")
    np.testing.assert_allclose(seen, x_tf, rtol=1e-5, atol=1e-5)
    plain = model.clone(transform_input=False)
    np.testing.assert_array_equal(plain.apply(variables, x_tf, method="prepare_input"), x_tf)
    resized = model.clone(resize_to=96).apply(
        variables, x_tv.astype(jnp.float32), method="prepare_input"
    )
    assert resized.shape == (2, 96, 96, 3)


def test_depthwise_conv_equals_the_grouped_convolution():
    rng = np.random.default_rng(0)
    for h, c, k, s in [(12, 8, 3, 1), (12, 8, 5, 2), (7, 4, 5, 1), (13, 4, 3, 2)]:
        x = jnp.asarray(rng.normal(size=(2, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, 1, c)), jnp.float32)
        want = jax.lax.conv_general_dilated(
            x,
            w,
            (s, s),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision="highest",
        )
        from pcam_jax.models.efficientnet import depthwise_conv

        np.testing.assert_allclose(depthwise_conv(x, w, s), want, rtol=1e-5, atol=1e-5)


def test_view_pooled_models_are_exactly_invariant(lite0_variables):
    """logits(T_g x) == logits(x) for g in the model's group, in eval and train mode; the
    plain model (negative control) and p4 under mirrors are not. The three models share one
    set of variables: view pooling adds none."""
    plain, variables = lite0_variables
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
    stack = jnp.stack([G.transform_plane(x, "p4m", g) for g in range(8)])
    for name, exact in (
        ("efficientnet_lite0", 1),
        ("p4_efficientnet_lite0", 4),
        ("p4m_efficientnet_lite0", 8),
    ):
        model = models.create(name)
        for train_mode in (False, True):
            fn = jax.jit(
                lambda xx, m=model, t=train_mode: m.apply(
                    variables,
                    xx,
                    train=t,
                    mutable=["batch_stats"],
                    rngs={"dropout": jax.random.key(3)},
                )[0]
            )
            logits = np.stack([np.asarray(fn(xx)) for xx in stack])
            scale = np.abs(logits[0]).max()
            errs = [float(np.abs(y - logits[0]).max() / scale) for y in logits]
            assert max(errs[:exact]) < 1e-4, (name, train_mode, errs)
            if exact < 8:  # the transforms outside the model's group move its logits
                assert min(errs[exact:]) > 1e-3, (name, train_mode, errs)


def test_frozen_blocks_and_the_backbone_rate_reach_the_optimizer(lite0_variables):
    """SGD, one step: frozen blocks do not move (AdamW's decay neither), the backbone moves at
    backbone_lr_scale of its rate at scale 1, the head at the full rate."""
    base, variables = lite0_variables
    model = base.clone(frozen_blocks=5)
    params = variables["params"]
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = load_config_file(REPO / "configs" / "transfer_finetune.py").optimizer

    def update(name, scale):
        c = cfg.copy_and_resolve_references()
        c.name, c.backbone_lr_scale, c.weight_decay, c.momentum = name, scale, 0.1, 0.0
        tx = make_optimizer(
            c,
            optax.constant_schedule(0.1),
            models.trainable_mask(model, params),
            models.head_mask(model, params),
        )
        # one compiled update (run op by op, each of ~300 leaves compiled its own programs)
        u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        return u

    full, slow = update("sgd", 1.0), update("sgd", 0.25)
    np.testing.assert_array_equal(slow["blocks_4"]["project_conv"]["kernel"], 0.0)
    np.testing.assert_array_equal(slow["conv_stem"]["kernel"], 0.0)
    np.testing.assert_allclose(
        slow["blocks_9"]["project_conv"]["kernel"],
        0.25 * full["blocks_9"]["project_conv"]["kernel"],
    )
    np.testing.assert_array_equal(slow["fc"]["kernel"], full["fc"]["kernel"])
    assert float(jnp.abs(full["blocks_9"]["project_conv"]["kernel"]).min()) > 0
    adamw = update("adamw", 0.25)
    np.testing.assert_array_equal(adamw["blocks_0"]["depthwise_conv"]["kernel"], 0.0)
    assert float(jnp.abs(adamw["blocks_9"]["depthwise_conv"]["kernel"]).min()) > 0


@pytest.mark.slow
def test_a_short_fine_tuning_run_learns(synthetic_root, tmp_path):
    c = load_config_file(
        REPO / "configs" / "transfer_finetune.py",
        "--config.data.source=pcam_hdf5",
        f"--config.data.root={synthetic_root}",
        "--config.data.worker_count=0",
        "--config.augment.where=host",
        "--config.train_minutes=0",
        "--config.num_train_steps=30",
        "--config.model.bn_momentum=0.9",  # running statistics adapt within the short run
        "--config.batch_size=16",
        "--config.eval_batch_size=64",
        "--config.eval_every_steps=30",
        "--config.checkpoint_every_steps=30",
        "--config.schedule.warmup_steps=5",
        "--config.ema_decay=0.9",
    )
    val = train.train_and_evaluate(c, tmp_path / "run")
    assert val["auc"] > 0.85, val  # chance is 0.5


@pytest.mark.skipif(
    REF_PYTHON is None,
    reason="no reference env: run `bash bench/reference_env.sh .venv-escnn` "
    "or set PCAM_ESCNN_PYTHON",
)
def test_the_port_equals_the_pytorch_reference():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "crosscheck_efficientnet.py"),
            "--ref-python",
            REF_PYTHON,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "top1_agree_224: True" in out.stdout
