"""The pcam_jax architectures rebuilt in escnn (PyTorch): runs in the reference environment only.

Imports torch and escnn, never jax or pcam_jax. An architecture is a plain dict ("spec") that
``bench/vs_escnn.py`` also turns into the pcam_jax model, so both frameworks build the same
network from the same numbers:

* ``{"family": "cnn", "group": "p4m", "widths": [11, 23, 45], ...}``: pcam_jax's ``GroupCNN``
  (``p4mcnn``): per stage two 3x3 'same' convs (lifting first) + BN + ReLU, 2x2 max pooling,
  feature-map dropout (``GroupDropout`` below, pcam_jax's semantics); then max over the group,
  mean over space, dense 256, dropout, dense.
* ``{"family": "densenet", "group": "p4m", "growth": 4, "depth": 1, ...}``: pcam_jax's
  ``GroupDenseNet``: lifting stem 3x3, dense blocks of BN-ReLU-conv3x3 with concatenation,
  transitions BN-ReLU-conv1x1 + 2x2 average pooling, BN-ReLU, mean over space and group, dense.

A pcam_jax width of ``C`` channels per group element is ``C`` regular fields here (``C * |G|``
tensor channels). Convolutions are ``R2Conv`` (trivial -> regular for the first, regular ->
regular after), batch norm ``InnerBatchNorm`` (statistics shared by the |G| channels of a
field, as in pcam_jax), pooling ``PointwiseMaxPool2D`` / ``PointwiseAvgPool2D``, group pooling
``GroupPooling``. ``basis="default"`` uses escnn's default (band-limited) steerable basis, which
is what a user gets; ``basis="full"`` uses rings and frequencies that span the whole space of
equivariant 3x3 kernels (the same freedom as pcam_jax's base kernel).
"""

from __future__ import annotations

import math
import sys
from typing import Any

# escnn uses scikit-learn's randomized_svd when sklearn is importable and scipy's SVD
# otherwise; the reference env has no scikit-learn (reported to break escnn's basis code on
# np.matrix) while a machine may have it installed, so hide it: every run takes scipy's path.
if "sklearn" not in sys.modules:
    sys.modules["sklearn"] = None  # type: ignore[assignment]

import torch  # noqa: E402
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402


def gspace(group: str) -> Any:
    """escnn gspace of pcam_jax's group name ("p4" -> C4, "p4m" -> D4)."""
    if group == "p4":
        return gspaces.rot2dOnR2(4)
    if group == "p4m":
        return gspaces.flipRot2dOnR2(4)
    raise ValueError(f"group {group!r}: expected 'p4' or 'p4m'")


def basis_kwargs(kernel_size: int, basis: str) -> dict[str, Any]:
    """R2Conv keyword arguments for the basis choice ("default" or "full")."""
    if basis == "default" or kernel_size == 1:
        return {}
    if basis == "full":
        if kernel_size != 3:
            raise ValueError("basis='full' is defined for 3x3 kernels only")
        # Rings at every radius of the 3x3 grid (0, 1, sqrt 2), frequencies up to 2: spans all
        # k*k*|G_in| dimensions of equivariant kernels (checked by crosscheck_escnn.py).
        return {
            "rings": [0.0, 1.0, math.sqrt(2.0)],
            "sigma": [0.005, 0.4, 0.4],
            "frequencies_cutoff": lambda r: 2.0,
        }
    raise ValueError(f"basis {basis!r}: expected 'default' or 'full'")


def conv(
    in_type: Any,
    out_type: Any,
    kernel_size: int,
    basis: str,
    bias: bool,
    padding: int | None = None,
) -> enn.R2Conv:
    """R2Conv with 'same' padding for odd kernels (pcam_jax's 'SAME', stride 1)."""
    pad = (kernel_size - 1) // 2 if padding is None else padding
    return enn.R2Conv(
        in_type,
        out_type,
        kernel_size,
        padding=pad,
        bias=bias,
        **basis_kwargs(kernel_size, basis),
    )


class GroupDropout(enn.EquivariantModule):
    """pcam_jax's GroupDropout in escnn: one mask entry per (sample, regular field), shared by
    the field's |G| channels and all pixels (``torch.nn.functional.dropout3d`` on the
    (N, fields, |G|, H, W) view). escnn's own ``FieldDropout`` draws a mask per pixel too and
    builds it with ``torch.cuda.FloatTensor``; this keeps the two networks identical."""

    def __init__(self, in_type: enn.FieldType, p: float) -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        self.p = p
        self.n = in_type.gspace.fibergroup.order()

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        if not self.training or self.p == 0.0:
            return x
        t = x.tensor
        b, c, h, w = t.shape
        y = torch.nn.functional.dropout3d(t.view(b, c // self.n, self.n, h, w), self.p, True)
        return enn.GeometricTensor(y.view(b, c, h, w), self.out_type)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape


class EscnnCNN(torch.nn.Module):
    """pcam_jax's GroupCNN (p4cnn / p4mcnn) in escnn."""

    def __init__(self, spec: dict[str, Any], basis: str = "default") -> None:
        super().__init__()
        gs = gspace(spec["group"])
        self.n = gs.fibergroup.order()
        self.in_type = enn.FieldType(gs, 3 * [gs.trivial_repr])
        batch_norm = spec.get("batch_norm", True)
        layers: list[enn.EquivariantModule] = []
        cur = self.in_type
        for width in spec["widths"]:
            for _ in range(spec.get("convs_per_stage", 2)):
                out = enn.FieldType(gs, width * [gs.regular_repr])
                layers.append(conv(cur, out, 3, basis, bias=not batch_norm))
                if batch_norm:
                    layers.append(enn.InnerBatchNorm(out))
                layers.append(enn.ReLU(out, inplace=True))
                cur = out
            layers.append(enn.PointwiseMaxPool2D(cur, 2, 2))
            layers.append(GroupDropout(cur, spec.get("dropout", 0.25)))
        layers.append(enn.GroupPooling(cur))
        self.features = enn.SequentialModule(*layers)
        dense = spec.get("dense", 256)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(spec["widths"][-1], dense),
            torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(spec.get("dense_dropout", 0.5)),
            torch.nn.Linear(dense, spec.get("num_classes", 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(enn.GeometricTensor(x, self.in_type)).tensor  # max over the group
        return self.head(y.mean(dim=(2, 3)))  # mean over space


class EscnnDenseNet(torch.nn.Module):
    """pcam_jax's GroupDenseNet (p4densenet / p4mdensenet) in escnn."""

    def __init__(self, spec: dict[str, Any], basis: str = "default") -> None:
        super().__init__()
        gs = gspace(spec["group"])
        self.gs = gs
        self.n = gs.fibergroup.order()
        self.in_type = enn.FieldType(gs, 3 * [gs.trivial_repr])
        growth, depth = spec["growth"], spec["depth"]
        blocks = spec.get("blocks", 5)
        compression = spec.get("compression", 0.5)

        def regular(c: int) -> Any:
            return enn.FieldType(gs, c * [gs.regular_repr])

        def bn_relu(t: Any) -> enn.SequentialModule:
            return enn.SequentialModule(enn.InnerBatchNorm(t), enn.ReLU(t, inplace=True))

        channels = spec.get("stem") or 2 * growth
        self.stem = conv(self.in_type, regular(channels), 3, basis, bias=False)
        self.blocks = torch.nn.ModuleList()
        self.transitions = torch.nn.ModuleList()
        for b in range(blocks):
            layers = torch.nn.ModuleList()
            for _ in range(depth):
                t = regular(channels)
                layers.append(
                    enn.SequentialModule(bn_relu(t), conv(t, regular(growth), 3, basis, False))
                )
                channels += growth
            self.blocks.append(layers)
            if b < blocks - 1:
                feats = max(1, int(channels * compression))
                t = regular(channels)
                self.transitions.append(
                    enn.SequentialModule(
                        bn_relu(t),
                        conv(t, regular(feats), 1, basis, False),
                        enn.PointwiseAvgPool2D(regular(feats), 2, 2),
                    )
                )
                channels = feats
        self.final = bn_relu(regular(channels))
        self.channels = channels
        self.classifier = torch.nn.Linear(channels, spec.get("num_classes", 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(enn.GeometricTensor(x, self.in_type))
        for b, layers in enumerate(self.blocks):
            for layer in layers:
                h = enn.tensor_directsum([h, layer(h)])
            if b < len(self.transitions):
                h = self.transitions[b](h)
        y = self.final(h).tensor
        n, _, hh, ww = y.shape
        y = y.view(n, self.channels, self.n, hh, ww).mean(dim=(2, 3, 4))  # group and space
        return self.classifier(y)


def build(spec: dict[str, Any], basis: str = "default") -> torch.nn.Module:
    """The escnn network for ``spec`` (see the module docstring)."""
    if spec["family"] == "cnn":
        return EscnnCNN(spec, basis)
    if spec["family"] == "densenet":
        return EscnnDenseNet(spec, basis)
    raise ValueError(f"unknown family {spec['family']!r}")


def conv_signature(model: torch.nn.Module, x: torch.Tensor) -> list[list[int]]:
    """[[Cin, Cout, k, H_out, W_out], ...] of every convolution (tensor channels), in call order.

    Used to check that the escnn and pcam_jax networks are the same architecture.
    """
    sig: list[list[int]] = []

    def hook(mod: enn.R2Conv, inp: tuple, out: Any) -> None:
        h, w = out.tensor.shape[-2:]
        sig.append([mod.in_type.size, mod.out_type.size, mod.kernel_size, int(h), int(w)])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, enn.R2Conv)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    for hd in handles:
        hd.remove()
    return sig
