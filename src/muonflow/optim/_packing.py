"""Packed momentum storage: the buffers of a stack of same-shape matrices are views of one tensor.

The functional kernel then updates and maps the whole stack in place, without a copy
(:func:`~muonflow.optim.functional.regmuon` recognizes consecutive views of one storage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class MomentumPacks:
    """Cache of ``(group index, stack key) -> (members, stacked momentum, their state views)``."""

    def __init__(self) -> None:
        self._packs: dict[tuple[int, tuple[Any, ...]], tuple[tuple[Tensor, ...], Tensor, Any]] = {}

    def clear(self) -> None:
        self._packs.clear()

    def pack(
        self,
        state: Any,
        gi: int,
        key: tuple[Any, ...],
        params: Sequence[Tensor],
        counts: Sequence[int],
        shape: tuple[int, int],
        dlayout: Any = None,
    ) -> Tensor:
        """The stacked momentum ``[sum k_i, m, n]`` of ``params``; ``state[p]["momentum_buffer"]``
        become views of it.

        ``dlayout``: the :class:`muonflow.distributed.MatrixLayout` of DTensor ``params``: the
        stack holds their local shards and the state buffers are DTensors, placed as the
        parameters, viewing it.

        Reused while the members and their buffers are unchanged; otherwise (first step, after
        ``load_state_dict``, a member without gradient, a buffer replaced from outside) repacked,
        copying the existing buffers, so the values are never changed.
        """
        cached = self._packs.get((gi, key))
        if cached is not None:
            c_params, stacked, views = cached
            if len(c_params) == len(params) and all(
                a is b and state[a].get("momentum_buffer") is v
                for a, b, v in zip(c_params, params, views, strict=True)
            ):
                return stacked
        first = params[0]
        if dlayout is not None:  # the local shards' matrices [k_local, rows, cols]
            k_mn = [dlayout.local_shape(dlayout.local(p)) for p in params]
            counts, shape = [k for k, _, _ in k_mn], k_mn[0][1:]
        stacked = torch.zeros(sum(counts), *shape, dtype=first.dtype, device=first.device)
        views = []
        off = 0
        for p, k in zip(params, counts, strict=True):
            piece = stacked[off : off + k]
            view = piece.view(p.shape) if dlayout is None else dlayout.wrap(piece, p)
            old = state[p].get("momentum_buffer")
            if old is not None:
                view.copy_(old)
            state[p]["momentum_buffer"] = view
            views.append(view)
            off += k
        if cached is not None:  # members that left: give them their own storage back
            keep = {id(p) for p in params}
            for p in cached[0]:
                if id(p) not in keep and "momentum_buffer" in state[p]:
                    state[p]["momentum_buffer"] = state[p]["momentum_buffer"].clone()
        self._packs[(gi, key)] = (tuple(params), stacked, tuple(views))
        return stacked
