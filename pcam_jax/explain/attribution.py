"""Attribution maps: which pixels of a patch drove the model's tumour score.

Target and layout
-----------------
Every method explains the tumour log-odds ``s(x) = logit_tumour(x) - logit_normal(x)`` (p_tumour
is ``sigmoid(s)``, so a pixel that raises ``s`` raises p_tumour) of a model in evaluation mode
(batch-norm running statistics, no dropout: each patch is explained on its own). ``x`` is the
patch as float32 RGB in [0, 255], before the model's own preprocessing (normalisation, and the
resize of Inception), so a map lives on the patch's pixel grid. Maps are float32 ``(N, H, W)``
and non-negative; only their ranks and relative sizes mean anything.

Methods (pure functions of ``(model, variables, preprocess, images)``, jitted and batched by
``attribute``)
--------------------------------------------------------------------------------------------
``gradient``              ``sum_c |ds/dx_c|`` (Simonyan et al. 2014): sensitivity, either sign.
``smoothgrad``            the gradient map averaged over ``samples`` copies of the patch with
                          Gaussian noise of ``noise`` x 255 added (Smilkov et al. 2017).
``integrated_gradients``  ``relu(sum_c (x - b)_c * mean_k ds/dx_c(b + a_k (x - b)))`` over
                          ``steps`` midpoints ``a_k`` (Sundararajan et al. 2017): the pixels whose
                          change from the baseline raised the score. The baseline ``b`` is a flat
                          patch of the training set's mean colour (what normalises to zero); the
                          signed attributions (``signed=True``) sum to ``s(x) - s(b)``
                          (completeness). The positive part, not the magnitude: the magnitude
                          keeps the factor ``|x - b|``, an image of the input itself, and fails
                          the model-randomisation check (rank correlation 0.57 with a fully
                          re-initialised model in our test, against -0.09 for the positive part).
``gradcam``               ``relu(sum_k w_k A_k)``, ``w_k`` the spatial mean of ``ds/dA_k``, for the
                          feature maps ``A`` of one layer (Selvaraju et al. 2017), resized
                          bilinearly to the patch. For group models ``k`` runs over every
                          (feature, group element) channel: the group axis is summed, as the
                          invariant head pools it. Default layer (``default_gradcam_layer``): the
                          last spatial convolution whose map is at least a quarter of the patch
                          side (24x24 on 96: ``stage1_block0_conv1`` in the ResNets). The last
                          conv layer (6x6) sees the whole patch from every cell and does not
                          localise: on the synthetic data, where tumour lies in the centre, it
                          put 13% of the map there (the area share is 11%), the 24x24 layer 45%.

Sanity checks (Adebayo et al. 2018; tests/test_attribution.py): re-initialising the weights
from the top layer down must decorrelate the maps from the trained model's (``rank_correlation``
below 0.3 once every layer is random; an edge detector, which ignores the model, stays at 1.0);
and on the synthetic data a trained model's maps must concentrate in the labelled centre while
a model trained on shuffled labels must not.

Equivariance (for a model whose score is invariant, ``s(T x) = s(x)`` for ``T`` in its group)
-----------------------------------------------------------------------------------------------
``T`` permutes pixels, so ``grad s(T x) = T grad s(x)``: the map of a rotated or mirrored patch
is the rotated or mirrored map, to float rounding, for ``gradient`` and ``gradcam`` (whose
layer's maps transform as ``L_T A``, a rotation and a permutation of the group channels that
the sum over channels removes; the bilinear resize with half-pixel centres commutes with the
dihedral group on square maps). ``integrated_gradients`` is exact in exact arithmetic (a flat
baseline is fixed by ``T``) but not in float: near the flat baseline many ReLU inputs sit at
the same value close to zero, and rounding flips some of them (relative error up to about
1e-2 of the map's maximum, against 1e-6 for the others). ``smoothgrad`` is equivariant only in
expectation: its noise is drawn for the patch as given, not transformed with it. For a plain
(z2) model none of this holds, except through what it learned from D4 augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.errors import ModelError
from pcam_jax.infer import LoadedModel, Preprocess, check_patches, split_outputs
from pcam_jax.runtime.xla_options import compiler_options

METHODS: tuple[str, ...] = ("gradient", "smoothgrad", "integrated_gradients", "gradcam")
#: Which method to use when (the README's table says the same).
METHOD_NOTES: dict[str, str] = {
    "gradient": "fastest (one backward pass); pixel-sharp but speckled",
    "smoothgrad": "the gradient averaged over noisy copies: less speckle, `samples` x the cost",
    "integrated_gradients": "evidence for tumour that adds up to the score change from a flat "
    "patch; `steps` x the cost",
    "gradcam": "regions on a 24x24 grid (4 px cells); cheap and the easiest to read",
}


def float_preprocess(preprocess: Preprocess) -> Preprocess:
    """`preprocess` computing in float32 (attributions are not taken in bfloat16)."""
    return preprocess.replace(dtype=jnp.float32)


def tumour_log_odds(
    model: nn.Module, variables: dict[str, Any], preprocess: Preprocess, x: jax.Array
) -> jax.Array:
    """s(x) = logit_tumour - logit_normal, (N,), of float RGB patches x (N, H, W, 3) in [0, 255]."""
    logits, _ = split_outputs(model.apply(variables, float_preprocess(preprocess)(x), train=False))
    return logits[:, 1] - logits[:, 0]


def _input_gradient(
    model: nn.Module, variables: dict[str, Any], preprocess: Preprocess, x: jax.Array
) -> jax.Array:
    """ds/dx (N, H, W, 3): the scores of different patches are independent in eval mode."""
    return jax.grad(lambda v: jnp.sum(tumour_log_odds(model, variables, preprocess, v)))(x)


def vanilla_gradient(
    model: nn.Module, variables: dict[str, Any], preprocess: Preprocess, images: jax.Array
) -> jax.Array:
    """sum_c |ds/dx_c|: (N, H, W). Exactly equivariant for invariant models."""
    x = images.astype(jnp.float32)
    return jnp.sum(jnp.abs(_input_gradient(model, variables, preprocess, x)), axis=-1)


def smoothgrad(
    model: nn.Module,
    variables: dict[str, Any],
    preprocess: Preprocess,
    images: jax.Array,
    key: jax.Array,
    samples: int = 16,
    noise: float = 0.15,
) -> jax.Array:
    """Mean over `samples` of sum_c |ds/dx_c| at x + N(0, (noise * 255)^2): (N, H, W).

    The samples x images run as one batch of gradients (N * samples rows)."""
    x = images.astype(jnp.float32)
    noisy = x[None] + noise * 255.0 * jax.random.normal(key, (samples, *x.shape), jnp.float32)
    g = _input_gradient(model, variables, preprocess, noisy.reshape(-1, *x.shape[1:]))
    return jnp.mean(jnp.sum(jnp.abs(g), axis=-1).reshape(samples, *x.shape[:3]), axis=0)


def integrated_gradients(
    model: nn.Module,
    variables: dict[str, Any],
    preprocess: Preprocess,
    images: jax.Array,
    steps: int = 32,
    signed: bool = False,
) -> jax.Array:
    """Integrated gradients from the mean-colour patch, midpoint rule over `steps`.

    Returns relu(sum_c attribution_c) (N, H, W), or with ``signed`` the attributions (N, H, W, 3),
    whose sum over a patch approximates s(x) - s(baseline). The steps x images run as one batch
    of gradients (N * steps rows).
    """
    x = images.astype(jnp.float32)
    baseline = jnp.broadcast_to(jnp.asarray(preprocess.mean, jnp.float32), x.shape)
    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
    points = baseline[None] + alphas[:, None, None, None, None] * (x - baseline)[None]
    g = _input_gradient(model, variables, preprocess, points.reshape(-1, *x.shape[1:]))
    attributions = (x - baseline) * jnp.mean(g.reshape(steps, *x.shape), axis=0)
    return attributions if signed else jax.nn.relu(jnp.sum(attributions, axis=-1))


def rows_per_patch(method: str, samples: int = 16, steps: int = 32) -> int:
    """How many gradients one patch costs under `method`."""
    return {"smoothgrad": samples, "integrated_gradients": steps}.get(method, 1)


def _module_path(module: nn.Module) -> str:
    return "/".join(module.path)


def feature_layers(model: nn.Module, variables: dict[str, Any], size: int = 96) -> list[dict]:
    """The modules whose output is a spatial feature map, in call order.

    Each entry: ``{"layer": "a/b", "kind": class name, "kernel": int or None, "shape": (H, W,
    C)}`` (shapes for a ``size`` x ``size`` input). Any ``layer`` is a valid Grad-CAM layer.
    """
    found: list[dict] = []

    def record(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            if isinstance(out, jax.Array) and out.ndim == 4 and out.shape[1] > 1:
                k = getattr(context.module, "kernel_size", None)
                k = max(k) if isinstance(k, tuple | list) else k
                entry = {
                    "layer": _module_path(context.module),
                    "kind": type(context.module).__name__,
                    "kernel": k,
                    "shape": tuple(out.shape[1:]),
                }
                if entry not in found:
                    found.append(entry)
        return out

    def run() -> None:
        with nn.intercept_methods(record):
            model.apply(variables, jnp.zeros((1, size, size, 3), jnp.float32), train=False)

    jax.eval_shape(run)
    return found


def default_gradcam_layer(model: nn.Module, variables: dict[str, Any], size: int = 96) -> str:
    """The last spatial convolution (kernel > 1) whose map is at least size/4 on a side (the
    last spatial convolution of all if none is)."""
    convs = [e for e in feature_layers(model, variables, size) if (e["kernel"] or 0) > 1]
    if not convs:
        raise ModelError(f"{type(model).__name__}: no spatial convolution for Grad-CAM")
    fine = [e for e in convs if e["shape"][0] * 4 >= size]
    return (fine or convs)[-1]["layer"]


@contextmanager
def tap_layer(layer: str, delta: jax.Array | None = None) -> Iterator[list[jax.Array]]:
    """Within the block, every model call records the output of module `layer` (a
    ``feature_layers`` name) in the yielded list, after adding `delta` to it when given (so
    ``jax.grad`` with respect to `delta` is the gradient with respect to that output)."""
    captured: list[jax.Array] = []

    def tap(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _module_path(context.module) == layer:
            if delta is not None:
                out = out + delta
            captured.append(out)
        return out

    with nn.intercept_methods(tap):
        yield captured


def spatial_layer_shapes(
    model: nn.Module, variables: dict[str, Any], layer: str, size: int = 96
) -> tuple[int, ...]:
    """(h, w, C) of `layer`'s output; ModelError naming the valid layers if it is not one."""
    shapes = {e["layer"]: e["shape"] for e in feature_layers(model, variables, size)}
    if layer not in shapes:
        raise ModelError(
            f"layer {layer!r} is not a spatial layer of this model; choose one of {list(shapes)}"
        )
    return shapes[layer]


def gradcam(
    model: nn.Module,
    variables: dict[str, Any],
    preprocess: Preprocess,
    images: jax.Array,
    layer: str,
) -> jax.Array:
    """Grad-CAM of `layer` (a ``feature_layers`` name), resized to the patch: (N, H, W)."""
    x = images.astype(jnp.float32)

    def score(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        with tap_layer(layer, delta) as captured:
            s = tumour_log_odds(model, variables, preprocess, x)
        if len(captured) != 1:
            raise ModelError(f"Grad-CAM layer {layer!r} was called {len(captured)} times, not once")
        return jnp.sum(s), captured[0]

    shape = spatial_layer_shapes(model, variables, layer, x.shape[1])
    delta = jnp.zeros((x.shape[0], *shape), jnp.float32)
    grads, activations = jax.grad(score, has_aux=True)(delta)
    weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, K)
    cam = jax.nn.relu(jnp.sum(weights * activations, axis=-1))  # (N, h, w)
    return jax.image.resize(cam, (x.shape[0], x.shape[1], x.shape[2]), "bilinear")


def make_attribution_fn(
    model: nn.Module,
    preprocess: Preprocess,
    method: str,
    *,
    layer: str | None = None,
    samples: int = 16,
    noise: float = 0.15,
    steps: int = 32,
) -> Callable[..., jax.Array]:
    """jit((variables, uint8 images, key) -> maps (N, H, W)) for one method and its settings
    (the key is used by smoothgrad only)."""
    if method not in METHODS:
        raise ModelError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "gradcam" and layer is None:
        raise ModelError("gradcam needs a layer (default_gradcam_layer gives the usual one)")

    def run(variables: dict[str, Any], images: jax.Array, key: jax.Array) -> jax.Array:
        if method == "gradient":
            return vanilla_gradient(model, variables, preprocess, images)
        if method == "smoothgrad":
            return smoothgrad(model, variables, preprocess, images, key, samples, noise)
        if method == "integrated_gradients":
            return integrated_gradients(model, variables, preprocess, images, steps)
        return gradcam(model, variables, preprocess, images, str(layer))

    return jax.jit(run, compiler_options=compiler_options())


def attribute(
    loaded: LoadedModel,
    images: np.ndarray,
    method: str = "gradcam",
    *,
    batch_size: int = 64,
    seed: int = 0,
    layer: str | None = None,
    **settings: Any,
) -> np.ndarray:
    """Maps float32 (N, H, W) of uint8 patches (N, H, W, 3) for a loaded workdir or bundle.

    ``batch_size`` counts gradient rows: a call takes ``batch_size // rows_per_patch`` patches
    (at least one), padded to that many so the function compiles once. ``settings``:
    ``samples``/``noise`` (smoothgrad), ``steps`` (integrated_gradients).
    """
    check_patches(images, loaded)
    if method == "gradcam" and layer is None:
        layer = default_gradcam_layer(loaded.model, loaded.variables, loaded.patch_size)
    cache_key = ("attribution", method, layer, tuple(sorted(settings.items())))
    if cache_key not in loaded.compiled_fns:
        loaded.compiled_fns[cache_key] = make_attribution_fn(
            loaded.model, loaded.preprocess, method, layer=layer, **settings
        )
    fn = loaded.compiled_fns[cache_key]
    per_call = max(1, batch_size // rows_per_patch(method, **_row_settings(settings)))
    key = jax.random.key(seed)
    out = []
    for lo in range(0, len(images), per_call):
        chunk = images[lo : lo + per_call]
        pad = np.zeros((per_call - len(chunk), *chunk.shape[1:]), chunk.dtype)
        maps = fn(loaded.variables, np.concatenate([chunk, pad]), jax.random.fold_in(key, lo))
        out.append(np.asarray(maps)[: len(chunk)])
    if not out:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    return np.concatenate(out).astype(np.float32)


def _row_settings(settings: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in settings.items() if k in ("samples", "steps")}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps a[i], b[i] (N, H, W) -> (N,); 0 where
    either map is constant (it shares no structure with anything)."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(denom > 0, (ra * rb).sum(1) / np.where(denom > 0, denom, 1), 0.0)


def centre_mass(maps: np.ndarray, centre: int = 32) -> np.ndarray:
    """Share of each map's total inside the centre `centre` x `centre` square: (N,) (NaN for an
    all-zero map). A map spread evenly scores (centre / side)^2, 0.111 on 96x96."""
    side = maps.shape[1]
    lo = (side - centre) // 2
    total = maps.sum(axis=(1, 2))
    inside = maps[:, lo : lo + centre, lo : lo + centre].sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)
