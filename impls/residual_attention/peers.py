"""Peers: PyTorch's own functions for the three kinds (specs/residual_attention.md §7).

``torch_ops``: mixed = ``torch.sigmoid``, channel = ``F.normalize(m, p=2, dim=1)``,
spatial = ``torch.sigmoid(F.instance_norm(m))`` (eps 1e-5, biased variance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnbench
from attnbench.cases import Case
from impls.residual_attention.mechanism import check_kind


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if case.get("kind") == "spatial" and case["H"] * case["W"] == 1:
        return "F.instance_norm raises for H·W = 1 ('Expected more than 1 spatial element when training')"
    return None


@attnbench.register("residual_attention", kind="peer", name="torch_ops", supports=_supports)
def ran_torch_ops(trunk: torch.Tensor, mask_logits: torch.Tensor, kind: str = "mixed") -> torch.Tensor:
    """(1 + f(m)) ⊙ trunk with f = sigmoid | F.normalize | sigmoid∘F.instance_norm."""
    check_kind(kind)
    if kind == "mixed":
        f = torch.sigmoid(mask_logits)
    elif kind == "channel":
        f = F.normalize(mask_logits, p=2.0, dim=1)
    else:
        f = torch.sigmoid(F.instance_norm(mask_logits, eps=1e-5))
    return (1.0 + f) * trunk
