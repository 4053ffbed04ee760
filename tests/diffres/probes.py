"""A memory probe for the DiffRes tests: the largest tensor any op returns while it is active."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestTensor(TorchDispatchMode):
    """``largest``: the most elements of any tensor an op returned. With ``fresh_only``, results
    that share storage with the op's inputs (in-place results, views) do not count, so the
    probe sees only new allocations."""

    def __init__(self, fresh_only: bool = False) -> None:
        super().__init__()
        self.fresh_only = fresh_only
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = ({t.untyped_storage().data_ptr()
                   for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
                  if self.fresh_only else set())
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out
