"""Cross-check of pcam_jax's group convolutions against escnn (the independent reference).

    python bench/crosscheck_escnn.py [--ref-python .venv-escnn/bin/python] [--keep DIR]

Runs in the project venv; the escnn side (``bench/escnn_reference/escnn_side.py``) runs in the
reference environment (``bench/reference_env.sh``) as a child process, and the two exchange
npz files in a temporary directory, never imports. For p4 (C4) and p4m (D4):

1. Element orderings: each escnn element's action on a marker image is matched to pcam_jax's
   ``transform_plane``, giving the map g -> escnn element; escnn's regular representation must
   then equal pcam_jax's group-axis permutation (``regular_permutation``) under that map.
2. Kernel spaces, lifting (trivial -> regular) and group (regular -> regular) 3x3 layers:
   escnn's basis (rings and frequencies that span all equivariant 3x3 kernels; its rank must be
   the dimension from characters: 9 and 9|G|) is exported; pcam_jax's expanded filter banks
   (``lift_kernel``, ``expand_group_kernel``, HWIO, group axis inner) are mapped to escnn's
   layout (OIHW, escnn's element order) and projected on that span, block by block: the
   relative residual must be ~1e-7. Conversely, a random filter of escnn's basis must be
   reproduced by pcam_jax's expansion of some base kernel (least squares over the base kernel):
   the two spaces are equal. Negative controls must give large residuals: a random filter bank
   of the same shape, the correct filters under a wrong element mapping (rotation sense
   reversed, (m, r) -> (m, -r)), and a group kernel expanded without its group-axis
   permutation.
3. A small network (lifting conv + bias, group batch norm in eval mode, ReLU, 2x2 max pool,
   group conv 3x3 + bias, ReLU, group conv 1x1 + bias, group max pool, spatial mean, dense)
   built from the SAME expanded weights in both frameworks (escnn's basis coefficients fitted by
   least squares to the pcam_jax filters): feature maps and logits must agree to 1e-4
   (relative to their largest value), and both sides must be equivariant on their own.

Exit status 0 when every check passes; prints the residuals and differences.
"""

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TOL_RESIDUAL = 1e-5  # projection residual, relative (float32 filters, float64 projection)
TOL_CONTROL = 0.1  # negative controls must exceed this
TOL_NETWORK = 1e-4  # network outputs, relative to their largest value
TOL_EQUIV = 1e-4


def default_ref_python():
    env = os.environ.get("PCAM_ESCNN_PYTHON")
    if env:
        return env
    cand = ROOT / ".venv-escnn" / "bin" / "python"
    return str(cand) if cand.exists() else None


def run_escnn(ref_python, *args):
    cmd = [ref_python, "-W", "ignore", str(HERE / "escnn_reference" / "escnn_side.py"), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("PCAM_ESCNN_PATH"):  # extra sys.path for the escnn side only
        env["PYTHONPATH"] = os.environ["PCAM_ESCNN_PATH"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"escnn side failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------------------------ mapping


def element_map(group, plane_action, flip_rotation=False):
    """pcam index g -> escnn element index, matched by the action on a 5x5 marker image."""
    from pcam_jax.equivariant import groups as G

    marker = np.arange(25, dtype=np.float32).reshape(5, 5)
    n = G.group_order(group)
    out = np.full(n, -1)
    for g in range(n):
        m, r = G.elements(group)[g]
        gg = G.element_index(m, -r) if flip_rotation else g
        moved = G.transform_plane(marker, group, int(gg), axes=(0, 1))
        hits = [j for j in range(len(plane_action)) if np.array_equal(plane_action[j], moved)]
        if len(hits) != 1:
            raise AssertionError(f"{group}: element {g} matches escnn elements {hits}")
        out[g] = hits[0]
    if sorted(out) != list(range(n)):
        raise AssertionError(f"{group}: element map {out} is not a bijection")
    return out


def regular_repr_error(group, emap, regular):
    """max |rho_escnn(e(g)) - P L_g P^-1| over g (P: pcam group index h -> escnn index)."""
    from pcam_jax.equivariant import groups as G

    n = G.group_order(group)
    worst = 0.0
    for g in range(n):
        perm = G.regular_permutation(group, g)  # new[h] = old[perm[h]]
        want = np.zeros((n, n))
        for h in range(n):
            want[emap[h], emap[perm[h]]] = 1.0
        worst = max(worst, float(np.abs(regular[emap[g]] - want).max()))
    return worst


def to_escnn(filt_hwio, group, emap, in_regular, out_regular):
    """HWIO, group axis inner (pcam) -> OIHW in escnn's channel order."""
    from pcam_jax.equivariant import groups as G

    n = G.group_order(group)
    k0, k1, cin, cout = filt_hwio.shape
    oihw = np.transpose(np.asarray(filt_hwio, np.float64), (3, 2, 0, 1))

    def chan_perm(c, regular):
        if not regular:
            return np.arange(c)
        idx = np.empty(c, dtype=int)
        for ch in range(c):
            field, g = divmod(ch, n)
            idx[field * n + emap[g]] = ch  # escnn channel <- pcam channel
        return idx

    return oihw[chan_perm(cout, out_regular)][:, chan_perm(cin, in_regular)]


def projection_residual(filt_oihw, basis, n, in_regular):
    """Max over (out field, in field) blocks of ||f - proj_span(basis) f|| / ||f||."""
    b = basis.reshape(basis.shape[0], -1).T  # (entries, dim)
    q, _ = np.linalg.qr(b)
    step_in = n if in_regular else 1
    worst = 0.0
    for o in range(0, filt_oihw.shape[0], n):
        for i in range(0, filt_oihw.shape[1], step_in):
            f = filt_oihw[o : o + n, i : i + step_in].reshape(-1)
            r = f - q @ (q.T @ f)
            worst = max(worst, float(np.linalg.norm(r) / np.linalg.norm(f)))
    return worst


# ------------------------------------------------------------------------------ kernels


def check_kernels(basis, group, rng):
    import jax.numpy as jnp

    from pcam_jax.equivariant import groups as G

    n = G.group_order(group)
    plane = basis[f"{group}/plane_action"]
    emap = element_map(group, plane)
    wrong = element_map(group, plane, flip_rotation=True)
    res = {
        "element_map": emap.tolist(),
        "escnn_elements": [str(s) for s in basis[f"{group}/elements"]],
        "regular_repr_err": regular_repr_error(group, emap, basis[f"{group}/regular"]),
    }
    for name in ("lift", "group"):
        b = basis[f"{group}/{name}/basis"]
        rank = int(basis[f"{group}/{name}/rank"])
        theory = int(basis[f"{group}/{name}/theory_dim"])
        in_reg = name == "group"
        if name == "lift":
            w = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
            filt = np.asarray(G.lift_kernel(jnp.asarray(w), group))
        else:
            w = rng.normal(size=(3, 3, 2, n, 2)).astype(np.float32)
            filt = np.asarray(G.expand_group_kernel(jnp.asarray(w), group))
        mapped = to_escnn(filt, group, emap, in_reg, True)
        r = {
            "basis_dim": int(b.shape[0]),
            "rank": rank,
            "theory_dim": theory,
            "default_basis_dim": int(basis[f"{group}/{name}/default_dim"]),
            "residual": projection_residual(mapped, b, n, in_reg),
            "control_random": projection_residual(rng.normal(size=mapped.shape), b, n, in_reg),
            "control_wrong_order": projection_residual(
                to_escnn(filt, group, wrong, in_reg, True), b, n, in_reg
            ),
        }
        if name == "group":  # expansion without the group-axis permutation
            no_perm = np.asarray(G.lift_kernel(jnp.asarray(w.reshape(3, 3, 2 * n, 2)), group))
            r["control_no_permutation"] = projection_residual(
                to_escnn(no_perm, group, emap, True, True), b, n, True
            )
        # converse: escnn's random filter is pcam_jax's expansion of some base kernel
        target = basis[f"{group}/{name}/random_escnn_filter"]  # (|G|, in, k, k), one block
        shape = (3, 3, 1, 1) if name == "lift" else (3, 3, 1, n, 1)
        size = int(np.prod(shape))
        expand = G.lift_kernel if name == "lift" else G.expand_group_kernel
        cols = [
            to_escnn(
                np.asarray(expand(jnp.asarray(np.eye(size)[i].reshape(shape), jnp.float32), group)),
                group,
                emap,
                in_reg,
                True,
            ).reshape(-1)
            for i in range(size)
        ]
        a = np.stack(cols, axis=1)
        t = target.reshape(-1)
        coef, *_ = np.linalg.lstsq(a, t, rcond=None)
        r["converse_residual"] = float(np.linalg.norm(a @ coef - t) / np.linalg.norm(t))
        r["pcam_params_per_block"] = size
        res[name] = r
    return res, emap


# ------------------------------------------------------------------------------ network


def build_network(group, emap, rng, widths=(4, 3, 2), size=32):
    """pcam_jax small network; returns (npz dict for the escnn side, pcam outputs, equiv errs)."""
    import jax
    import jax.numpy as jnp

    from pcam_jax.equivariant import groups as G

    n = G.group_order(group)
    c1, c2, c3 = widths
    p = {
        "w1": rng.normal(size=(3, 3, 3, c1)) * 0.3,
        "b1": rng.normal(size=c1) * 0.1,
        "w2": rng.normal(size=(3, 3, c1, n, c2)) * 0.1,
        "b2": rng.normal(size=c2) * 0.1,
        "w3": rng.normal(size=(1, 1, c2, n, c3)) * 0.3,
        "b3": rng.normal(size=c3) * 0.1,
        "bn_mean": rng.normal(size=c1) * 0.1,
        "bn_var": rng.uniform(0.5, 2.0, size=c1),
        "bn_scale": rng.uniform(0.5, 1.5, size=c1),
        "bn_bias": rng.normal(size=c1) * 0.1,
        "dense_w": rng.normal(size=(c3, 2)),
        "dense_b": rng.normal(size=2) * 0.1,
    }
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    eps = 1e-5
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)

    def features(x):
        h = G.lifting_conv(x, p["w1"], group) + jnp.repeat(p["b1"], n)
        h = G.group_normalize(h, p["bn_mean"], p["bn_var"], p["bn_scale"], p["bn_bias"], group, eps)
        h = G.max_pool(jax.nn.relu(h), 2, 2)
        h = G.group_conv(h, p["w2"], group) + jnp.repeat(p["b2"], n)
        return jax.nn.relu(h)

    def logits(x):
        h = features(x)
        h = G.group_conv(h, p["w3"], group, 1, "VALID") + jnp.repeat(p["b3"], n)
        h = G.invariant_pool(h, group, "max", "mean")
        return h @ p["dense_w"] + p["dense_b"]

    with jax.default_matmul_precision("highest"):
        f = np.asarray(features(jnp.asarray(x)))
        lg = np.asarray(logits(jnp.asarray(x)))
        feq, leq = [], []
        for g in range(n):
            gx = G.transform_plane(jnp.asarray(x), group, g)
            fg = np.asarray(features(gx))
            want = np.asarray(G.transform_group_features(jnp.asarray(f), group, g))
            feq.append(float(np.abs(fg - want).max() / np.abs(f).max()))
            leq.append(float(np.abs(np.asarray(logits(gx)) - lg).max() / np.abs(lg).max()))

    def expanded_bias(b):
        return np.repeat(np.asarray(b, np.float64), n)  # same value on every copy, any order

    data = {
        "group": np.array(group),
        "widths": np.array(widths),
        "x": np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
        "conv1_filter": to_escnn(G.lift_kernel(p["w1"], group), group, emap, False, True),
        "conv1_bias": expanded_bias(p["b1"]),
        "conv2_filter": to_escnn(G.expand_group_kernel(p["w2"], group), group, emap, True, True),
        "conv2_bias": expanded_bias(p["b2"]),
        "conv3_filter": to_escnn(G.expand_group_kernel(p["w3"], group), group, emap, True, True),
        "conv3_bias": expanded_bias(p["b3"]),
        "bn_mean": np.asarray(p["bn_mean"]),
        "bn_var": np.asarray(p["bn_var"]),
        "bn_scale": np.asarray(p["bn_scale"]),
        "bn_bias": np.asarray(p["bn_bias"]),
        "bn_eps": np.array(eps),
        "dense_w": np.asarray(p["dense_w"]).T.copy(),
        "dense_b": np.asarray(p["dense_b"]),
    }
    # pcam features in escnn's layout (NCHW, escnn channel order) for the comparison
    f_esc = np.transpose(f, (0, 3, 1, 2))
    idx = np.empty(f.shape[-1], dtype=int)
    for ch in range(f.shape[-1]):
        field, g = divmod(ch, n)
        idx[field * n + emap[g]] = ch
    return data, f_esc[:, idx], lg, feq, leq


# ------------------------------------------------------------------------------ driver


def run(ref_python, workdir=None):
    """Run every check; returns (results dict, list of failure strings)."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="crosscheck_escnn_"))
    tmp.mkdir(parents=True, exist_ok=True)
    run_escnn(ref_python, "basis", str(tmp / "basis.npz"))
    basis = np.load(tmp / "basis.npz")
    rng = np.random.default_rng(0)
    results, failures = {}, []
    for group in ("p4", "p4m"):
        res, emap = check_kernels(basis, group, rng)
        data, f_pcam, l_pcam, feq, leq = build_network(group, emap, rng)
        np.savez(tmp / f"net_in_{group}.npz", **data)
        run_escnn(
            ref_python,
            "network",
            str(tmp / f"net_in_{group}.npz"),
            str(tmp / f"net_out_{group}.npz"),
        )
        out = np.load(tmp / f"net_out_{group}.npz")
        res["network"] = {
            "features_rel_diff": float(
                np.abs(out["features"] - f_pcam).max() / np.abs(f_pcam).max()
            ),
            "logits_rel_diff": float(np.abs(out["logits"] - l_pcam).max() / np.abs(l_pcam).max()),
            "logits_max_abs_diff": float(np.abs(out["logits"] - l_pcam).max()),
            "escnn_fit_residual_max": float(out["fit_residuals"].max()),
            "escnn_equivariance_features": float(out["equivariance_features"].max()),
            "escnn_equivariance_logits": float(out["equivariance_logits"].max()),
            "pcam_equivariance_features": max(feq),
            "pcam_equivariance_logits": max(leq),
            "escnn_basis_dims": out["basis_dims"].tolist(),
        }
        results[group] = res

        def need(cond, what, group=group):
            if not cond:
                failures.append(f"{group}: {what}")

        need(res["regular_repr_err"] < 1e-6, f"regular representation {res['regular_repr_err']}")
        for name in ("lift", "group"):
            r = res[name]
            need(
                r["rank"] == r["theory_dim"], f"{name} basis rank {r['rank']} != {r['theory_dim']}"
            )
            need(r["residual"] < TOL_RESIDUAL, f"{name} residual {r['residual']:.2e}")
            need(
                r["converse_residual"] < TOL_RESIDUAL,
                f"{name} converse {r['converse_residual']:.2e}",
            )
            for key in [k for k in r if k.startswith("control_")]:
                need(r[key] > TOL_CONTROL, f"{name} negative control {key} = {r[key]:.2e}")
        net = res["network"]
        need(
            net["escnn_fit_residual_max"] < TOL_RESIDUAL,
            f"escnn fit {net['escnn_fit_residual_max']}",
        )
        need(net["features_rel_diff"] < TOL_NETWORK, f"features differ {net['features_rel_diff']}")
        need(net["logits_rel_diff"] < TOL_NETWORK, f"logits differ {net['logits_rel_diff']}")
        for key in [k for k in net if "equivariance" in k]:
            need(net[key] < TOL_EQUIV, f"{key} = {net[key]}")
    return results, failures


def report(results):
    lines = []
    for group, res in results.items():
        lines.append(
            f"{group}: element map pcam g -> escnn {res['element_map']} "
            f"({', '.join(res['escnn_elements'])}); "
            f"regular repr error {res['regular_repr_err']:.1e}"
        )
        for name in ("lift", "group"):
            r = res[name]
            ctrl = ", ".join(f"{k[8:]} {r[k]:.2f}" for k in r if k.startswith("control_"))
            lines.append(
                f"  {name:5s} 3x3: escnn full basis {r['basis_dim']} elements, rank {r['rank']} "
                f"= theory {r['theory_dim']} (default basis {r['default_basis_dim']}); "
                f"residual {r['residual']:.1e}, converse {r['converse_residual']:.1e}; "
                f"negative controls: {ctrl}"
            )
        net = res["network"]
        lines.append(
            f"  network: features rel diff {net['features_rel_diff']:.1e}, logits rel diff "
            f"{net['logits_rel_diff']:.1e} (max abs {net['logits_max_abs_diff']:.1e}); escnn fit "
            f"residual {net['escnn_fit_residual_max']:.1e}; equivariance escnn "
            f"{net['escnn_equivariance_features']:.1e}/{net['escnn_equivariance_logits']:.1e}, "
            f"pcam_jax {net['pcam_equivariance_features']:.1e}/"
            f"{net['pcam_equivariance_logits']:.1e} (features/logits)"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", default=default_ref_python())
    ap.add_argument("--keep", default=None, help="directory for the exchanged npz files")
    ap.add_argument(
        "--ref-path",
        default=None,
        help="extra PYTHONPATH for the escnn side only (default $PCAM_ESCNN_PATH)",
    )
    args = ap.parse_args()
    if args.ref_path:
        os.environ["PCAM_ESCNN_PATH"] = args.ref_path
    if not args.ref_python:
        raise SystemExit(
            "crosscheck_escnn: no reference interpreter; run `bash bench/reference_env.sh "
            ".venv-escnn` or pass --ref-python / set PCAM_ESCNN_PYTHON"
        )
    results, failures = run(args.ref_python, args.keep)
    print(report(results))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    print("crosscheck_escnn: all checks passed")


if __name__ == "__main__":
    main()
