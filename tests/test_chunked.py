"""Chunked encoding over a host's devices (optical_jax.chunked): the rows come back in
order, without the padding rows, the same on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax import chunked, encoder as enc, mesh as mesh_lib

ARCH = dict(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
            max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def _rows(n, length, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 64, size=(n, length)).astype(np.int32)
  lengths = rng.integers(1, length + 1, size=n)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return ids * mask, mask


@pytest.mark.parametrize("devices,chunk", [(1, 5), (8, 5), (8, 16)])
def test_per_row_outputs_in_order_without_padding(devices, chunk):
  cfg = enc.EncoderConfig(**ARCH)
  params = enc.init_params(cfg, jax.random.key(0))
  fn = jax.jit(lambda p, i, m: enc.apply(p, i, m, cfg=cfg))
  ids, mask = _rows(21, 12)
  want = np.asarray(fn(params, ids, mask))
  mesh = mesh_lib.make_mesh(jax.devices()[:devices])
  got = list(chunked.apply(fn, params, len(ids), lambda lo, hi: (ids[lo:hi], mask[lo:hi]),
                           chunk=chunk, mesh=mesh))
  step = -(-chunk // devices) * devices   # rounded up to the device count
  assert [lo for lo, _ in got] == list(range(0, 21, step))
  out = np.concatenate([o for _, o in got])
  assert out.shape == want.shape
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_reductions_see_no_padding_rows():
  fn = jax.jit(lambda p, i, m: (jnp.sum(m), jnp.sum(jnp.where(m > 0, i, 0))))
  ids, mask = _rows(13, 7, seed=1)
  total = [0, 0]
  for _, (n, s) in chunked.apply(fn, {}, len(ids), lambda lo, hi: (ids[lo:hi], mask[lo:hi]),
                                 chunk=8, mesh=mesh_lib.make_mesh(jax.devices()[:8]),
                                 per_row=False):
    total[0] += int(n)
    total[1] += int(s)
  assert total == [int(mask.sum()), int((ids * mask).sum())]


def test_params_placed_once_are_not_copied_again():
  mesh = mesh_lib.make_mesh(jax.devices()[:2])
  placed = chunked.place({"w": np.ones(3, np.float32)}, mesh)
  assert chunked.place(placed, mesh) is placed
  assert chunked.local_part(mesh).devices.tolist() == list(jax.devices()[:2])
