"""Encoder parity with transformers' PyTorch BERT and XLM-R, positions, pooling, dtypes."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from optical_jax import encoder, weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


def _batch(pad_id, rng, lengths=(9, 5, 1, 7), length=9, vocab=99):
  ids = np.full((len(lengths), length), pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(4, vocab, size=n)
    mask[i, :n] = 1
  return ids, mask


def _torch_out(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("prefixed", [False, True])
def test_parity_with_transformers(tmp_path, arch, prefixed):
  torch.manual_seed(0)
  if arch == "bert":
    tcfg = transformers.BertConfig(**TINY, type_vocab_size=2, pad_token_id=0)
    model = (transformers.BertForMaskedLM if prefixed else transformers.BertModel)(tcfg)
  else:
    tcfg = transformers.XLMRobertaConfig(**{**TINY, "max_position_embeddings": 66},
                                         type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
    model = (transformers.XLMRobertaForMaskedLM if prefixed else transformers.XLMRobertaModel)(tcfg)
  model.eval()
  model.save_pretrained(tmp_path, safe_serialization=True)
  base = model.base_model if prefixed else model
  cfg, params = weights.load_hf(str(tmp_path))
  assert cfg.position_style == ("bert" if arch == "bert" else "roberta")
  ids, mask = _batch(cfg.pad_token_id, np.random.default_rng(0))
  ours = np.asarray(encoder.apply(params, ids, mask, cfg=cfg))
  ref = _torch_out(base, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_array_less(np.abs(ours - ref)[real].max(), 1e-4)


def test_position_ids():
  ids = np.array([[5, 6, 7, 1, 1], [5, 1, 1, 1, 1]])
  bert = encoder.EncoderConfig(pad_token_id=1, position_style="bert")
  xlmr = encoder.EncoderConfig(pad_token_id=1, position_style="roberta")
  np.testing.assert_array_equal(encoder.position_ids(jnp.asarray(ids), bert), [[0, 1, 2, 3, 4]] * 2)
  # XLM-R: real tokens count from pad_id + 1 = 2, padding sits at pad_id.
  np.testing.assert_array_equal(encoder.position_ids(jnp.asarray(ids), xlmr),
                                [[2, 3, 4, 1, 1], [2, 1, 1, 1, 1]])
  ref = transformers.models.xlm_roberta.modeling_xlm_roberta.create_position_ids_from_input_ids(
      torch.tensor(ids), padding_idx=1) if hasattr(
          transformers.models.xlm_roberta.modeling_xlm_roberta,
          "create_position_ids_from_input_ids") else None
  if ref is not None:
    np.testing.assert_array_equal(encoder.position_ids(jnp.asarray(ids), xlmr), ref.numpy())


def _tiny_cfg(**kw):
  return encoder.EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                               intermediate_size=24, max_position_embeddings=32, **kw)


def test_padding_does_not_change_real_tokens():
  cfg = _tiny_cfg()
  params = encoder.init_params(cfg, jax.random.key(0))
  ids, mask = _batch(0, np.random.default_rng(1), lengths=(6,), length=6, vocab=50)
  short = encoder.apply(params, ids, mask, cfg=cfg)
  ids2, mask2 = np.pad(ids, ((0, 0), (0, 5))), np.pad(mask, ((0, 0), (0, 5)))
  long = encoder.apply(params, ids2, mask2, cfg=cfg)
  np.testing.assert_allclose(short, long[:, :6], atol=1e-5)


def test_dropout_uses_rng_and_bfloat16_keeps_float32_params():
  cfg = _tiny_cfg(dtype="bfloat16", head_dim=8)
  params = encoder.init_params(cfg, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert params["head"]["kernel"].shape == (16, 8)
  ids, mask = _batch(0, np.random.default_rng(2), vocab=50)
  det = encoder.apply(params, ids, mask, cfg=cfg)
  assert det.dtype == jnp.float32 and det.shape == (4, 9, 8)
  a = encoder.apply(params, ids, mask, cfg=cfg, deterministic=False, rng=jax.random.key(1))
  b = encoder.apply(params, ids, mask, cfg=cfg, deterministic=False, rng=jax.random.key(1))
  c = encoder.apply(params, ids, mask, cfg=cfg, deterministic=False, rng=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  f32 = encoder.apply(params, ids, mask, cfg=cfg.replace(dtype="float32"))
  np.testing.assert_allclose(det, f32, atol=0.1)  # bf16 compute stays close to f32


def test_pooling():
  tokens = jnp.asarray([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
  mask = jnp.asarray([[1, 1, 0]])
  np.testing.assert_allclose(encoder.mean_pool(tokens, mask), [[2.0, 2.0]])
  np.testing.assert_allclose(encoder.cls_pool(tokens, mask), [[1.0, 0.0]])
  np.testing.assert_allclose(encoder.pool(tokens, mask, "mean", True), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
  with pytest.raises(ValueError):
    encoder.pool(tokens, mask, "max", False)


@pytest.mark.parametrize("dtype,atol", [("float32", 2e-5), ("bfloat16", 6e-2)])
def test_fused_attention_matches_the_einsum_path(dtype, atol):
  """attention='fused' (jax.nn.dot_product_attention, the cuDNN / TPU kernels where
  present) against the default explicit softmax, with padded rows, outputs and gradients;
  the stated tolerances are the CPU's (float32: rounding; bfloat16: its 8-bit mantissa)."""
  cfg = _tiny_cfg(attention_dropout=0.0, dtype=dtype)
  params = encoder.init_params(cfg, jax.random.key(0))
  ids, mask = _batch(0, np.random.default_rng(3), vocab=50)
  fused = cfg.replace(attention="fused")
  out = encoder.apply(params, ids, mask, cfg=cfg)
  np.testing.assert_allclose(encoder.apply(params, ids, mask, cfg=fused), out, atol=atol)
  loss = lambda p, c: jnp.sum(encoder.apply(p, ids, mask, cfg=c) ** 2)
  g, gf = jax.grad(loss)(params, cfg), jax.grad(loss)(params, fused)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gf)):
    np.testing.assert_allclose(b, a, atol=atol * 20, rtol=atol * 20)


def test_fused_attention_refuses_what_it_cannot_do():
  with pytest.raises(ValueError, match="attention_dropout=0"):
    _tiny_cfg(attention="fused", attention_dropout=0.1)
  cfg = _tiny_cfg(attention="fused", attention_dropout=0.0)
  params = encoder.init_params(cfg, jax.random.key(0))
  ids, mask = _batch(0, np.random.default_rng(3), vocab=50)
  with pytest.raises(ValueError, match="attention='einsum'"):
    encoder.apply_with(params, ids, mask, cfg=cfg, cls_attention=True)
  with pytest.raises(ValueError, match="attention must be one of"):
    _tiny_cfg(attention="flash")
