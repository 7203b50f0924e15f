"""From a slide's blocks to p(tumour) per tissue cell: window by window, or densely.

Both predictors take the blocks ``wsi.slide.read_block`` reads (n x n cells plus the window
margin, uint8 (side, side, 3) with ``side = n * S + P - S``; n is the predictor's ``block``: 8
for windows, DENSE_BLOCK for a dense pass, where larger blocks share more of the margin) and
yield, block by block, the block's tissue cells (K, 2) (row, column) and their p(tumour) (K,).

``windows``: the P x P window centred on each tissue cell is cut out and run through the model
on its own (``LoadedModel.predict_batches``), exactly as pcam-predict runs a patch. Overlapping
windows share no work: with S = 32 and P = 96 every pixel is convolved 9 times.

``dense``: the whole block goes through the network once, fully convolutionally, and the head is
applied at every cell (the model's ``cells`` mode: its global mean over the last feature map
becomes a mean over each window's part of it; ``cells=(P / d, S / d)`` in units of the model's
``dense_stride`` d: the total stride of a padded ResNet, 32 for a valid one). For a padded
network a cell's value then differs from its window's: inside one window it sees zero padding at
the window's edge, the dense pass sees the real neighbours (up to the block's edge, where it too
pads). BENCHMARKS.md measures what that changes: on mosaics of real PCam patches, whose
neighbours are other patches, dense costs cell AUC. A model that never pads
(``models.valid_resnet``) has no such difference: its dense pass equals its windows. So
``auto``, the default, runs such a model densely and any other window by window, and ``dense``
is asked for where speed matters more (pcam-slide --mode=dense). Dense needs a model with a
``dense_stride`` (the ResNets with the ``mean`` head and the valid ResNets), run at its own
input size, and S and P multiples of d (``dense_support`` says why not, and --mode=dense
refuses).

Rotations: for p4 and p4m models both modes are exact under 90-degree rotations of the slide
(``tests/test_slide.py``): a window's prediction is invariant, and a dense pass over a rotated
block is the rotated map of the block, the block being square and centred on its cells.
With ``tta`` each window or block is also predicted in its 8 D4 views and the maps averaged.
Imports: infer.predict, infer.model, equivariant.groups, models, runtime, errors.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pcam_jax import models
from pcam_jax.equivariant import groups
from pcam_jax.errors import ModelError
from pcam_jax.infer.model import Preprocess, cast_floats
from pcam_jax.infer.predict import LoadedModel, pad_rows
from pcam_jax.runtime.distributed import AXIS, make_mesh, to_global
from pcam_jax.runtime.stopping import stops_deferred
from pcam_jax.runtime.xla_options import compiler_options
from pcam_jax.wsi.slide import BLOCK, SlideGeometry, read_block

MODES = ("auto", "windows", "dense")
DENSE_BLOCK = 16  # a dense pass's block: 16 x 16 cells and the margin, 576 pixels a side
Block = tuple[int, int, np.ndarray]  # (row0, col0, tissue cells (K, 2))


def block_stream(
    slide: Any, geom: SlideGeometry, blocks: list[Block], n: int = BLOCK, threads: int = 2
) -> Iterator[tuple[np.ndarray, Block]]:
    """(pixels, block) per block of n x n cells, in order; blocks are read on `threads`
    threads, at most 2 x threads ahead of the consumer."""

    def load(block: Block) -> tuple[np.ndarray, Block]:
        return read_block(slide, geom, block[0], block[1], n), block

    # submitting and shutting down under stops_deferred: a Ctrl-C inside ``submit`` would leave
    # a started reader the pool never joins, still reading when the caller closes the slide
    pool = ThreadPoolExecutor(max_workers=threads)
    queue: deque[Future[tuple[np.ndarray, Block]]] = deque()
    items = iter(blocks)
    try:
        for item in itertools.islice(items, 2 * threads):
            with stops_deferred():
                queue.append(pool.submit(load, item))
        while queue:
            result = queue.popleft().result()
            nxt = next(items, None)
            if nxt is not None:
                with stops_deferred():
                    queue.append(pool.submit(load, nxt))
            yield result
    finally:  # closed early: drop the reads not started and wait for the others
        with stops_deferred():
            for future in queue:
                future.cancel()
            pool.shutdown(wait=True)


def block_windows(
    pixels: np.ndarray, cells: np.ndarray, row0: int, col0: int, geom: SlideGeometry
) -> np.ndarray:
    """The P x P windows (K, P, P, 3) centred on `cells` (K, 2) (rows, cols) of a block."""
    s, p = geom.cell_model, geom.patch
    out = np.empty((len(cells), p, p, 3), np.uint8)
    for k, (r, c) in enumerate(cells):
        y, x = (r - row0) * s, (c - col0) * s
        out[k] = pixels[y : y + p, x : x + p]
    return out


def rebatch(
    stream: Iterator[tuple[np.ndarray, np.ndarray]], size: int, cells_out: deque[np.ndarray]
) -> Iterator[np.ndarray]:
    """Windows regrouped into batches of `size` (the last may be smaller); each batch's cells
    are appended to `cells_out` as it is yielded."""
    images: list[np.ndarray] = []
    cells: list[np.ndarray] = []
    held = 0
    for w, c in stream:
        images.append(w)
        cells.append(c)
        held += len(w)
        while held >= size:
            x, y = np.concatenate(images), np.concatenate(cells)
            cells_out.append(y[:size])
            yield x[:size]
            images, cells, held = [x[size:]], [y[size:]], held - size
    if held:
        cells_out.append(np.concatenate(cells))
        yield np.concatenate(images)


class WindowPredictor:
    """The ``windows`` mode: each tissue cell's window through ``LoadedModel.predict_batches``."""

    mode = "windows"
    block = BLOCK  # cells per side of a read

    def __init__(self, model: LoadedModel, batch_size: int = 256, tta: bool = False):
        self.model, self.batch_size, self.tta = model, batch_size, tta

    def predict(
        self, stream: Iterable[tuple[np.ndarray, Block]], geom: SlideGeometry
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(cells (K, 2), p(tumour) (K,)) per batch of windows of the read blocks `stream`
        (``block_stream``), in order."""
        windows = (
            (block_windows(pixels, cells, r0, c0, geom), cells)
            for pixels, (r0, c0, cells) in stream
        )
        fifo: deque[np.ndarray] = deque()
        batches = rebatch(windows, self.batch_size, fifo)
        for p in self.model.predict_batches(batches, batch_size=self.batch_size, tta=self.tta):
            yield fifo.popleft(), p


def dense_support(model: LoadedModel, stride: int) -> str | None:
    """None when `model` runs densely at cell stride `stride`, else the reason it cannot."""
    module = model.model
    name = model.info.get("model", {}).get("name") or type(module).__name__
    d = module.dense_stride() if hasattr(module, "dense_stride") else None
    if d is None:
        return (
            f"{name} has no dense form (only the ResNets with the mean head and the valid "
            "ResNets have one)"
        )
    if models.input_size(model.config.model.name) != model.patch_size:
        return f"{name} resizes its input; a dense pass needs the model's own input size"
    if stride % d or model.patch_size % d:
        return f"--stride={stride} and the {model.patch_size}-pixel window are not multiples of {d}"
    return None


def dense_step(
    variables: dict[str, Any],
    blocks: jax.Array,
    *,
    apply_fn: Any,
    preprocess: Preprocess,
    cells: tuple[int, int],
    tta: bool,
) -> jax.Array:
    """p(tumour) (B, n, n) at the cells of uint8 blocks (B, side, side, 3); with tta, the mean
    over the 8 D4 views of each block, each map turned back (``groups.transform_plane`` by the
    view's inverse) before averaging."""
    x = dataclasses.replace(preprocess, size=blocks.shape[1])(blocks)  # normalise and cast
    variables = {**variables, "params": cast_floats(variables["params"], preprocess.dtype)}
    inverse = groups.inverses("p4m")
    maps = []
    for g in range(groups.group_order("p4m")) if tta else [0]:
        logits = apply_fn(variables, groups.transform_plane(x, "p4m", g), train=False, cells=cells)
        m = jax.nn.softmax(logits.astype(jnp.float32), -1)[..., 1]
        maps.append(groups.transform_plane(m, "p4m", int(inverse[g])))
    return jnp.mean(jnp.stack(maps), axis=0)


class DensePredictor:
    """The ``dense`` mode: one fully convolutional pass per block, read out at every cell."""

    mode = "dense"
    block = DENSE_BLOCK  # cells per side of a read and of a pass

    def __init__(self, model: LoadedModel, stride: int, batch_size: int = 256, tta: bool = False):
        reason = dense_support(model, stride)
        if reason is not None:
            raise ModelError(
                f"--mode=dense: {reason}; use --mode=windows, or --model=bundled:p4resnet-valid "
                "(dense equals its windows)"
            )
        d = model.model.dense_stride()
        self.model = model
        self.blocks_per_call = max(1, batch_size // (self.block * self.block))
        self.mesh = make_mesh()
        cells = (model.patch_size // d, stride // d)
        key = ("dense", cells, tta)  # compiled once per model, not once per slide
        if key not in model.compiled_fns:
            fn = partial(
                dense_step,
                apply_fn=model.model.apply,
                preprocess=model.preprocess,
                cells=cells,
                tta=tta,
            )
            model.compiled_fns[key] = jax.jit(
                jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS)),
                compiler_options=compiler_options(),
            )
        self.fn = model.compiled_fns[key]

    def predict(
        self, stream: Iterable[tuple[np.ndarray, Block]], geom: SlideGeometry
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(cells (K, 2), p(tumour) (K,)) per group of the read blocks `stream`
        (``block_stream``), in order; a group's pass is dispatched before the previous
        group's results are fetched."""
        devices = jax.local_device_count()

        def dispatch(group: list[tuple[np.ndarray, Block]]) -> tuple[Any, list[Block]]:
            pixels = np.stack([p for p, _ in group])
            rows = len(group) + (-len(group)) % devices
            return self.fn(self.model.variables, to_global(self.mesh, pad_rows(pixels, rows))), [
                b for _, b in group
            ]

        def fetch(pending: tuple[Any, list[Block]]) -> tuple[np.ndarray, np.ndarray]:
            maps = np.asarray(pending[0])
            cells, values = [], []
            for m, (r0, c0, tissue) in zip(maps, pending[1], strict=False):
                cells.append(tissue)
                values.append(m[tissue[:, 0] - r0, tissue[:, 1] - c0])
            return np.concatenate(cells), np.concatenate(values).astype(np.float32)

        group: list[tuple[np.ndarray, Block]] = []
        pending = None
        for item in stream:
            group.append(item)
            if len(group) == self.blocks_per_call:
                current, group = dispatch(group), []
                if pending is not None:
                    yield fetch(pending)
                pending = current
        if group:
            current = dispatch(group)
            if pending is not None:
                yield fetch(pending)
            pending = current
        if pending is not None:
            yield fetch(pending)


def dense_is_exact(model: LoadedModel, stride: int) -> bool:
    """True when `model`'s dense pass equals its windows at cell stride `stride`: a model that
    never pads (``models.valid_resnet``), so that no window reads beyond its own pixels."""
    exact = getattr(model.model, "dense_is_exact", None)
    return dense_support(model, stride) is None and exact is not None and exact()


def choose_predictor(
    model: LoadedModel, mode: str, stride: int, batch_size: int = 256, tta: bool = False
) -> WindowPredictor | DensePredictor:
    """The predictor of `mode`: "auto" is dense where that equals windows (``dense_is_exact``)
    and windows otherwise; ModelError when "dense" is asked of a model that cannot run
    densely."""
    if mode not in MODES:
        raise ModelError(f"--mode={mode}: expected one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "dense" if dense_is_exact(model, stride) else "windows"
    if mode == "windows":
        return WindowPredictor(model, batch_size, tta)
    return DensePredictor(model, stride, batch_size, tta)
