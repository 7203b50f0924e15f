"""escnn side of the cross-check ``bench/crosscheck_escnn.py`` (runs in the reference env).

    python escnn_side.py basis OUT.npz            # escnn's facts about C4 and D4
    python escnn_side.py network IN.npz OUT.npz   # run a small escnn network on given weights

Exchanges data with the pcam_jax side only through npz files; never imports jax or pcam_jax.

``basis`` writes, for ``p4`` (C4, ``rot2dOnR2(4)``) and ``p4m`` (D4, ``flipRot2dOnR2(4)``):
the element names; each element's action on a 5x5 marker image (a trivial field, via
``GeometricTensor.transform``); the regular representation matrices; and, for the 3x3
lifting (trivial -> regular) and group (regular -> regular) kernels plus the 1x1 group kernel,
the kernel basis that ``R2Conv`` expands (every basis element evaluated as an (out, in, k, k)
filter) with the rings/frequencies of ``escnn_models.basis_kwargs(3, "full")``, its rank, the
dimension of escnn's default (band-limited) basis, and the dimension of the space of
equivariant kernels from characters: (1/|G|) sum_g chi_grid(g) chi_out(g) chi_in(g), where
chi_grid(g) counts the grid points that g fixes.

``network`` builds a small escnn network (``R2Conv`` 3x3 trivial -> regular with bias,
``InnerBatchNorm`` in eval mode, ``ReLU``, ``PointwiseMaxPool2D`` 2, ``R2Conv`` 3x3 regular ->
regular with bias, ``ReLU``, ``R2Conv`` 1x1 regular -> regular with bias, ``GroupPooling``, mean
over space, ``Linear``), sets every ``R2Conv``'s basis coefficients and bias by least squares
from the expanded filters in IN.npz (the residual of that fit is reported), runs it on the
input, and checks escnn's own equivariance with ``GeometricTensor.transform``.
"""

from __future__ import annotations

import sys

import escnn_models  # before escnn: it hides scikit-learn from escnn (this folder is sys.path[0])
import numpy as np
import torch
from escnn import nn as enn

torch.set_default_dtype(torch.float32)


def basis_matrix(conv: enn.R2Conv) -> np.ndarray:
    """(dim, out, in, k, k): the filter of each basis coefficient, float64."""
    exp = conv.basisexpansion
    d = exp.dimension()
    k = conv.kernel_size
    with torch.no_grad():
        cols = [
            exp(torch.eye(d)[i]).reshape(conv.out_type.size, conv.in_type.size, k, k)
            for i in range(d)
        ]
    return torch.stack(cols).double().numpy()


def run_basis(out_path: str) -> None:
    out: dict[str, np.ndarray] = {}
    for group in ("p4", "p4m"):
        gs = escnn_models.gspace(group)
        g = gs.fibergroup
        els = list(g.elements)
        out[f"{group}/elements"] = np.array([str(e) for e in els])
        triv = enn.FieldType(gs, [gs.trivial_repr])
        reg = enn.FieldType(gs, [gs.regular_repr])
        marker = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
        gt = enn.GeometricTensor(marker, triv)
        out[f"{group}/plane_action"] = np.stack([gt.transform(e).tensor[0, 0].numpy() for e in els])
        out[f"{group}/regular"] = np.stack([gs.regular_repr(e) for e in els])
        for name, a, b, k in (
            ("lift", triv, reg, 3),
            ("group", reg, reg, 3),
            ("group1x1", reg, reg, 1),
        ):
            conv = enn.R2Conv(a, b, k, **escnn_models.basis_kwargs(k, "full"))
            mat = basis_matrix(conv)
            out[f"{group}/{name}/basis"] = mat
            flat = mat.reshape(mat.shape[0], -1)
            out[f"{group}/{name}/rank"] = np.array(np.linalg.matrix_rank(flat, tol=1e-5))
            out[f"{group}/{name}/default_dim"] = np.array(
                enn.R2Conv(a, b, k).basisexpansion.dimension()
            )
            # dimension of the equivariant kernel space from characters
            total = 0.0
            for e in els:
                # a's and b's representation matrices; the grid action from the marker image
                chi_in = np.trace(a.representation(e))
                chi_out = np.trace(b.representation(e))
                m = torch.arange(k * k, dtype=torch.float32).reshape(1, 1, k, k)
                moved = enn.GeometricTensor(m, triv).transform(e).tensor[0, 0].numpy()
                chi_grid = int(np.sum(moved.reshape(-1) == np.arange(k * k)))
                total += chi_grid * chi_in * chi_out
            out[f"{group}/{name}/theory_dim"] = np.array(round(total / len(els)))
            # the full-basis filter of a random coefficient vector: the pcam side checks it is
            # reproducible by pcam_jax's expansion (the converse direction)
            coeff = np.random.default_rng(0).normal(size=mat.shape[0])
            out[f"{group}/{name}/random_escnn_filter"] = np.tensordot(coeff, mat, axes=1)
    np.savez(out_path, **out)


def set_conv(conv: enn.R2Conv, filt: np.ndarray, bias: np.ndarray | None) -> tuple[float, float]:
    """Least-squares basis coefficients (and bias) reproducing ``filt`` (OIHW); residuals."""
    mat = basis_matrix(conv).reshape(conv.basisexpansion.dimension(), -1)
    target = filt.astype(np.float64).reshape(-1)
    coef, *_ = np.linalg.lstsq(mat.T, target, rcond=None)
    res = float(np.linalg.norm(mat.T @ coef - target) / np.linalg.norm(target))
    bres = 0.0
    with torch.no_grad():
        conv.weights.copy_(torch.from_numpy(coef))
        if bias is not None:
            be = conv.bias_expansion.double().numpy()
            bcoef, *_ = np.linalg.lstsq(be, bias.astype(np.float64), rcond=None)
            bres = float(np.linalg.norm(be @ bcoef - bias) / max(np.linalg.norm(bias), 1e-30))
            conv.bias.copy_(torch.from_numpy(bcoef))
    return res, bres


def run_network(in_path: str, out_path: str) -> None:
    d = np.load(in_path)
    group = str(d["group"])
    gs = escnn_models.gspace(group)
    n = gs.fibergroup.order()
    c1, c2, c3 = (int(v) for v in d["widths"])
    t_in = enn.FieldType(gs, 3 * [gs.trivial_repr])
    t1 = enn.FieldType(gs, c1 * [gs.regular_repr])
    t2 = enn.FieldType(gs, c2 * [gs.regular_repr])
    t3 = enn.FieldType(gs, c3 * [gs.regular_repr])
    full = escnn_models.basis_kwargs(3, "full")
    conv1 = enn.R2Conv(t_in, t1, 3, padding=1, bias=True, **full)
    bn = enn.InnerBatchNorm(t1)
    conv2 = enn.R2Conv(t1, t2, 3, padding=1, bias=True, **full)
    conv3 = enn.R2Conv(t2, t3, 1, padding=0, bias=True)
    block1 = enn.SequentialModule(conv1, bn, enn.ReLU(t1), enn.PointwiseMaxPool2D(t1, 2, 2))
    block2 = enn.SequentialModule(conv2, enn.ReLU(t2))
    block3 = enn.SequentialModule(conv3, enn.GroupPooling(t3))
    dense = torch.nn.Linear(c3, 2)
    fits = {}
    for name, conv in (("conv1", conv1), ("conv2", conv2), ("conv3", conv3)):
        fits[name] = set_conv(conv, d[f"{name}_filter"], d[f"{name}_bias"])
    bnm = getattr(bn, f"batch_norm_[{n}]")
    with torch.no_grad():
        bnm.running_mean.copy_(torch.from_numpy(d["bn_mean"]))
        bnm.running_var.copy_(torch.from_numpy(d["bn_var"]))
        bnm.weight.copy_(torch.from_numpy(d["bn_scale"]))
        bnm.bias.copy_(torch.from_numpy(d["bn_bias"]))
        bnm.eps = float(d["bn_eps"])
        dense.weight.copy_(torch.from_numpy(d["dense_w"]))
        dense.bias.copy_(torch.from_numpy(d["dense_b"]))
    for m in (block1, block2, block3, dense):
        m.eval()  # caches the expanded filters; batch norm uses the running statistics

    def forward(x: torch.Tensor) -> tuple[enn.GeometricTensor, torch.Tensor]:
        with torch.no_grad():
            h2 = block2(block1(enn.GeometricTensor(x, t_in)))
            logits = dense(block3(h2).tensor.mean(dim=(2, 3)))
        return h2, logits

    x = torch.from_numpy(d["x"])
    h2, logits = forward(x)
    # escnn's own equivariance: f(g x) == g f(x) for the features, logits invariant
    feat_err, logit_err = [], []
    scale_f = float(h2.tensor.abs().max())
    scale_l = float(logits.abs().max())
    for e in gs.fibergroup.elements:
        gx = enn.GeometricTensor(x, t_in).transform(e).tensor
        h2g, lg = forward(gx)
        feat_err.append(float((h2g.tensor - h2.transform(e).tensor).abs().max()) / scale_f)
        logit_err.append(float((lg - logits).abs().max()) / scale_l)
    np.savez(
        out_path,
        features=h2.tensor.numpy(),
        logits=logits.numpy(),
        fit_residuals=np.array([[fits[k][0], fits[k][1]] for k in ("conv1", "conv2", "conv3")]),
        equivariance_features=np.array(feat_err),
        equivariance_logits=np.array(logit_err),
        basis_dims=np.array([c.basisexpansion.dimension() for c in (conv1, conv2, conv3)]),
    )


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "basis":
        run_basis(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "network":
        run_network(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
