"""Batched log-domain Sinkhorn in PyTorch, as a PyTorch user would write it (benchmarks only).

Mirrors the iteration of ott-jax's log-domain solver (`lse_mode=True`, sequential
updates): each iteration updates the column potential g, then the row potential f,

    g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps)
    f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps)

and every `inner` iterations computes the L1 error of the column marginal of
T = exp((f_i + g_j - C_ij) / eps) (ott's convergence criterion, `norm_error=1`).
Zero weights (padding) give -inf potentials, hence exactly zero plan rows/columns.
Potentials are kept scaled by 1/eps (u = f / eps) to save a division per element.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
  """1 - cos(x_i, y_j): [B, n, d], [B, m, d] -> [B, n, m]."""
  xn = torch.nn.functional.normalize(x, dim=-1)
  yn = torch.nn.functional.normalize(y, dim=-1)
  return 1.0 - torch.bmm(xn, yn.transpose(1, 2))


@torch.no_grad()
def sinkhorn_log(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float,
                 max_iterations: int, threshold: Optional[float] = None,
                 inner_iterations: int = 10) -> Tuple[torch.Tensor, int, torch.Tensor]:
  """Entropic OT plans of a batch: cost [B, n, m], a [B, n], b [B, m] -> (plan, iterations, error).

  With `threshold=None` it runs exactly `max_iterations` (still computing the error every
  `inner_iterations`, as ott does); otherwise it stops at the first check where every
  pair's column-marginal L1 error is below `threshold` (the batch stops together, as a
  vmapped ott while-loop does).
  """
  k = cost / epsilon
  la, lb = torch.log(a), torch.log(b)  # -inf on padding
  u = torch.zeros_like(a)
  v = torch.zeros_like(b)
  err = torch.full(a.shape[:1], float("inf"), dtype=cost.dtype)
  it = 0
  while it < max_iterations:
    v = lb - torch.logsumexp(u[:, :, None] - k, dim=1)
    u = la - torch.logsumexp(v[:, None, :] - k, dim=2)
    it += 1
    if it % inner_iterations == 0:
      col = torch.exp(u[:, :, None] + v[:, None, :] - k).sum(dim=1)
      err = (col - b).abs().sum(dim=-1)
      if threshold is not None and bool((err < threshold).all()):
        break
  plan = torch.exp(u[:, :, None] + v[:, None, :] - k)
  return plan, it, err
