"""The rows' Gramian built while they arrive, so that little of it is left when the last one comes.

A server waits for its clients' replies; a Gramian aggregator then needs ``G G^T`` over every row
before it can solve for its weights. :class:`GramianStream` holds a ``[slots, P]`` buffer with one
slot per row expected this round, in a fixed order (the server's: by client id), and computes the
products of a *tile* of :data:`TILE_ROWS` consecutive slots with every finished tile as soon as the
tile's last row is in. When the last reply arrives, only its tile's products remain (one read of the
rows), then the ``K x K`` solve and the combining pass.

The result does not depend on the order the rows arrive in, bit for bit: every product of two tiles
is computed the same way whichever came first (the lower tile on the left, summed over the same
column chunks in the same order, float32 products of :data:`CHUNK` columns accumulated in float64),
so a run is reproducible whatever its clients' timing. It is not the one-shot :func:`gramian`'s
single matrix product, which sums each entry in float32 over all P columns: the two agree to float32
rounding (largest error 1.6-3.2e-6 of ``|g_i| |g_j|`` against 0.6-3.1e-6 for the single product, on
Gaussian rows at K = 20-50, P = 1e5-1e6), and the same precision checks apply to both
(:func:`fedmtl.methods.aggregation.gramian.gramian`'s ``products``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmtl.methods.aggregation.gramian import GramianPrecision, full_float32_matmul

TILE_ROWS = 8  # slots per tile: the last reply leaves its tile's products with every other tile to do
# columns per product (two [TILE_ROWS, CHUNK] blocks, 4 MB, stay in cache): at K = 50, P = 1e6 the last reply's
# tile took the aggregate 44 ms after it with 2^16 columns, 48 ms with 2^14, 76 ms with 2^12 (2 cores)
CHUNK = 1 << 16


class GramianStream:
    """``slots`` rows of ``params`` float32 values, filled in any order (:meth:`row`, then :meth:`settle`);
    :meth:`gramian` gives the float64 products of any subset of them. ``precision="float64"``: the
    products are exact float64 accumulations (as :func:`~fedmtl.methods.aggregation.gramian.exact_gramian`)."""

    def __init__(
        self, slots: int, params: int, device: torch.device | str = "cpu", precision: GramianPrecision = "float32"
    ) -> None:
        if slots < 1 or params < 1:
            raise ValueError(f"a Gramian stream needs at least one slot and one parameter, got {slots} x {params}")
        self.rows = torch.zeros(slots, params, dtype=torch.float32, device=device)  # a slot never filled: zeros
        self.products = torch.zeros(slots, slots, dtype=torch.float64, device=device)
        self.exact = precision == "float64"
        self.sources: list[object | None] = [None] * slots  # what each settled slot was filled from
        self.settled = [False] * slots
        self.tiles = [range(start, min(start + TILE_ROWS, slots)) for start in range(0, slots, TILE_ROWS)]
        self.tile_done = [False] * len(self.tiles)

    @property
    def slots(self) -> int:
        return int(self.rows.shape[0])

    def row(self, slot: int) -> torch.Tensor:
        """Slot ``slot``'s row, to be written in place before :meth:`settle`."""
        if self.settled[slot]:
            raise ValueError(f"slot {slot} is settled already")
        return self.rows[slot]

    def settle(self, slot: int, source: object | None = None) -> None:
        """Slot ``slot`` holds its row (from ``source``, kept for :meth:`source`); when that completes its
        tile, the tile's products with every completed tile are computed now."""
        if self.settled[slot]:
            raise ValueError(f"slot {slot} is settled already")
        self.settled[slot], self.sources[slot] = True, source
        tile = slot // TILE_ROWS
        if all(self.settled[s] for s in self.tiles[tile]):
            self._complete(tile)

    def source(self, slot: int) -> object | None:
        """What slot ``slot`` was filled from (None while it is not: :meth:`settle` sets it)."""
        return self.sources[slot]

    def finish(self) -> None:
        """Compute every product still missing (tiles with slots never filled count those rows as zeros)."""
        for tile, done in enumerate(self.tile_done):
            if not done:
                self._complete(tile)

    def gramian(self, keep: Sequence[int] | None = None) -> torch.Tensor:
        """The float64 products of the rows in ``keep`` (all slots when None), in that order."""
        self.finish()
        if keep is None or list(keep) == list(range(self.slots)):
            return self.products
        index = torch.tensor(list(keep), dtype=torch.long, device=self.products.device)
        return self.products.index_select(0, index).index_select(1, index)

    def matrix(self, keep: Sequence[int] | None = None) -> torch.Tensor:
        """The ``[len(keep), P]`` rows in ``keep`` (the buffer itself when every slot is kept, in order)."""
        if keep is None or list(keep) == list(range(self.slots)):
            return self.rows
        return self.rows.index_select(0, torch.tensor(list(keep), dtype=torch.long, device=self.rows.device))

    def _complete(self, tile: int) -> None:
        """Products of ``tile`` with itself and every completed tile, chunk by chunk (the tile's block stays in cache)."""
        partners = [t for t, done in enumerate(self.tile_done) if done or t == tile]
        mine = self.tiles[tile]
        blocks = {
            t: torch.zeros(len(mine), len(self.tiles[t]), dtype=torch.float64, device=self.rows.device)
            for t in partners
        }
        with full_float32_matmul():
            for start in range(0, self.rows.shape[1], CHUNK):
                columns = self.rows[:, start : start + CHUNK]
                for t in partners:
                    lower, upper = (t, tile) if t < tile else (tile, t)  # one orientation whichever tile came first
                    product = self._product(columns[self.tiles[lower].start : self.tiles[lower].stop],
                                            columns[self.tiles[upper].start : self.tiles[upper].stop])  # fmt: skip
                    blocks[t] += product if lower == tile else product.T
        for t, block in blocks.items():
            other = self.tiles[t]
            if t == tile:  # the diagonal block: its upper triangle, mirrored, so that G is exactly symmetric
                block = block.triu() + block.triu(1).T
            self.products[mine.start : mine.stop, other.start : other.stop] = block
            self.products[other.start : other.stop, mine.start : mine.stop] = block.T
        self.tile_done[tile] = True

    def _product(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return left.double() @ right.double().T
        return (left @ right.T).double()
