"""BEiT-style relative position bias for a sequence that carries extra (pose) tokens.

BEiT's bias table covers `[CLS] + rows * columns` patches: patch-to-patch entries depend on the
2D offset, and three learned entries per head cover [CLS]-to-patch, patch-to-[CLS] and
[CLS]-to-[CLS]. Tokens that are not patches (the policy's pose tokens) have no grid position,
so they are treated exactly like [CLS]: a patch attending to a pose token gets the
patch-to-[CLS] entry, a pose token attending to a patch the [CLS]-to-patch entry, and pose/[CLS]
pairs among themselves the [CLS]-to-[CLS] entry. With no extra tokens the bias is HF's, unchanged.
"""

from __future__ import annotations

import torch


def extend_relative_bias(bias: torch.Tensor, extra: int) -> torch.Tensor:
    """(B, heads, 1 + N, 1 + N) bias for `[CLS | patches]` -> (B, heads, 1 + extra + N,
    1 + extra + N) for `[CLS | extra tokens | patches]`, extra tokens mapped onto [CLS]."""
    if extra == 0:
        return bias
    if extra < 0:
        raise ValueError(f'sequence shorter than [CLS] + patches by {-extra} tokens')
    size = bias.shape[-1]
    index = torch.cat([torch.zeros(1 + extra, dtype=torch.long),
                       torch.arange(1, size)]).to(bias.device)  # (1 + extra + N,)
    return bias[:, :, index][:, :, :, index]
