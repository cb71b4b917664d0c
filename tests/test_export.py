"""The student export loads in sentence-transformers and transformers with the Flax embeddings."""

import json
import os

import numpy as np
import pytest

from optical_jax import models

TEXTS = ["Habari ya asubuhi, rafiki yangu mpendwa kutoka Nairobi na Mombasa pia",
         "Rais wa Kenya ni nani?", "a", "Mji mkuu wa Tanzania"]
EXTRA = {"mode": "distill", "step": 150,
         "teacher": {"weights": "hf", "path": "asset:minilm", "query_prefix": "",
                     "doc_prefix": ""},
         "loss": {"loss": "ot", "marginals": "uniform", "ot": {"epsilon": 0.05, "cost": "cosine"}},
         "bitext": [{"type": "lines", "label": "ntrex-swa", "foreign": "/d/ntrex/swa.txt",
                     "english": "/d/ntrex/eng.txt", "take": 64},
                    {"type": "jsonl", "label": "afriqa-swa", "path": ["/d/a/swa.train.jsonl"]}],
         "lang": "sw"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def st():
  return pytest.importorskip("sentence_transformers")


def _tiny_spec(tokenizer, **over):
  arch = dict(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
              max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
  arch.update(over.pop("arch", {}))
  return models.model_spec(weights="random", tokenizer=tokenizer, arch=arch, **over)


def _flax(export_dir, texts):
  """Embeddings of the exported student as optical-jax loads it."""
  m = models.load_model(models.export_spec(export_dir))
  ids = m.tokenize_fn("query")(texts)
  tok, mask = m.tokenizer.pad(ids, max(len(x) for x in ids))
  return m, ids, m.embed_fn()(tok, mask)


def _transformers(export_dir, texts, spec):
  """Embeddings by plain transformers: AutoTokenizer + AutoModel + pooling (+ head) + L2."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModel, AutoTokenizer  # pylint: disable=g-import-not-at-top
  tok = AutoTokenizer.from_pretrained(export_dir)
  model = AutoModel.from_pretrained(export_dir).eval()
  batch = tok([spec.query_prefix + t for t in texts], padding=True, truncation=True,
              return_tensors="pt")
  with torch.no_grad():
    out = model(**batch)
  h = out.last_hidden_state
  if spec.pooling == "mean":
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = (h * m).sum(1) / m.sum(1)
  elif spec.pooling == "pooler":
    emb = out.pooler_output
  else:
    emb = h[:, 0]
  if spec.head_dim:
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    emb = emb @ load_file(os.path.join(export_dir, "model.safetensors"))["head.weight"].T
  if spec.normalize:
    emb = torch.nn.functional.normalize(emb, dim=-1)
  ids = [row[row != tok.pad_token_id].tolist() for row in batch["input_ids"]]
  return ids, emb.numpy()


def _check(st, export_dir, spec, texts=TEXTS):
  model, ids, ref = _flax(export_dir, texts)
  hf_ids, hf = _transformers(export_dir, texts, spec)
  assert hf_ids == ids  # same tokens, same truncation at query_max_len
  np.testing.assert_allclose(hf, ref, atol=1e-5)
  st_model = st.SentenceTransformer(export_dir, device="cpu")
  assert st_model.max_seq_length == spec.query_max_len
  got = st_model.encode(texts, prompt_name="query", convert_to_numpy=True)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  # The query prompt is the default, and it is applied: without it the vectors differ.
  np.testing.assert_allclose(st_model.encode(texts, convert_to_numpy=True), ref, atol=1e-5)
  if spec.query_prefix:
    bare = st_model.encode(texts, prompt="", convert_to_numpy=True)
    assert np.abs(bare - ref).max() > 1e-3
  return model, st_model


def test_tiny_random_with_head(tmp_path, st, minilm_dir):
  spec = _tiny_spec(os.path.join(minilm_dir, "tokenizer.json"), head_dim=16,
                    query_prefix="query: ", doc_prefix="passage: ", query_max_len=12)
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer, extra=EXTRA)
  _, st_model = _check(st, out, spec)
  dim = (st_model.get_embedding_dimension() if hasattr(st_model, "get_embedding_dimension")
         else st_model.get_sentence_embedding_dimension())
  assert dim == 16
  assert st_model.prompts == {"query": "query: ", "document": "passage: "}
  with open(os.path.join(out, "modules.json")) as f:
    assert [x["path"] for x in json.load(f)] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
  # The export still reads back as an optical-jax model with its head.
  assert models.export_spec(out).head_dim == 16


def test_bert_pooler_labse_style(tmp_path, st, minilm_dir):
  """LaBSE's sentence embedding ([CLS] -> BERT pooler, dense + tanh -> L2): transformers'
  `pooler_output` and a sentence-transformers Pooling(cls) -> Dense(tanh) -> Normalize
  give the Flax vectors; the export reads back with its pooler."""
  spec = _tiny_spec(os.path.join(minilm_dir, "tokenizer.json"), pooling="pooler",
                    query_max_len=12)
  m = models.load_model(spec)
  assert m.cfg.pooler and set(m.params) == {"encoder", "pooler"}
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer, extra=EXTRA)
  loaded, _ = _check(st, out, spec)
  np.testing.assert_array_equal(loaded.params["pooler"]["kernel"], m.params["pooler"]["kernel"])
  with open(os.path.join(out, "modules.json")) as f:
    assert [x["path"] for x in json.load(f)] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
  with open(os.path.join(out, "2_Dense", "config.json")) as f:
    assert json.load(f)["activation_function"] == "torch.nn.modules.activation.Tanh"
  with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
    assert "emb = out.pooler_output" in f.read()
  # Without the pooler's weights a 'pooler' export is refused, before anything is written.
  bare = m.cfg.replace(pooler=False)
  with pytest.raises(models.InputError, match="pooling 'pooler' needs an encoder with the pooler"):
    models.export_model(str(tmp_path / "bare"), bare, m.params, m.spec, m.tokenizer)
  assert not os.path.exists(tmp_path / "bare.tmp")


def test_minilm_asset(tmp_path, st, minilm_dir):
  spec = models.model_spec(weights="hf", path=minilm_dir, query_prefix="swali: ",
                           query_max_len=16)
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer, extra=EXTRA)
  _check(st, out, spec)
  with open(os.path.join(out, "modules.json")) as f:
    assert [x["path"] for x in json.load(f)] == ["", "1_Pooling", "2_Normalize"]


def test_vocab_txt_tokenizer_becomes_tokenizer_json(tmp_path, st, minilm_dir):
  spec = _tiny_spec(os.path.join(minilm_dir, "vocab.txt"), pooling="cls", normalize=False)
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer)
  assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(out))
  _, st_model = _check(st, out, spec)
  with open(os.path.join(out, "config_sentence_transformers.json")) as f:
    assert json.load(f)["similarity_fn_name"] == "dot"
  assert "Normalize" not in str(st_model)


@pytest.mark.slow
def test_xlmr_unigram_tokenizer_and_positions(tmp_path, st, e5_dir):
  """The e5 (XLM-R SentencePiece-unigram) tokenizer.json, on an XLM-R-position encoder."""
  spec = _tiny_spec(os.path.join(e5_dir, "tokenizer.json"), query_prefix="query: ",
                    doc_prefix="passage: ", pooling="cls",
                    arch=dict(vocab_size=250037, pad_token_id=1, position_style="roberta",
                              max_position_embeddings=40), query_max_len=24)
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["architectures"] == ["XLMRobertaModel"]
  with open(os.path.join(out, "tokenizer_config.json")) as f:
    assert json.load(f)["pad_token"] == "<pad>"
  _check(st, out, spec, TEXTS + ["Ni nini kilichotokea katika mji wa Arusha mwaka wa 1990 " * 3])


def test_model_card(tmp_path, minilm_dir):
  spec = _tiny_spec(os.path.join(minilm_dir, "tokenizer.json"), query_prefix="q: ")
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer, extra=EXTRA)
  with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
    card = f.read()
  assert card.startswith("---\nlibrary_name: sentence-transformers\n")
  for needle in ("`asset:minilm` (hf)", "| steps | 150 |", "| loss.loss | ot |",
                 "| loss.ot.epsilon | 0.05 |", "**ntrex-swa** (lines: `swa.txt`, `eng.txt`, "
                 "first 64 pairs)", "**afriqa-swa** (jsonl: `swa.train.jsonl`)",
                 "prompt_name='query'", "'q: '", "- sw\n- en\n"):
    assert needle in card, needle
  assert "## Evaluation" not in card
  scored = str(tmp_path / "scored")
  models.export_model(scored, m.cfg, m.params, m.spec, m.tokenizer,
                      extra=dict(EXTRA, eval={"optical": {"AP": 0.4123, "nDCG@10": 0.5},
                                              "zero-shot": {"AP": 0.124}}))
  out = scored
  with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
    card = f.read()
  assert "| system | AP | nDCG@10 |\n|---|---:|---:|\n| optical | 0.4123 | 0.5 |\n" \
         "| zero-shot | 0.124 |  |" in card
  assert models.read_export_spec(out)["eval"]["optical"]["AP"] == 0.4123


def test_maxsim_export_has_no_sentence_transformers_modules(tmp_path, minilm_dir):
  spec = _tiny_spec(os.path.join(minilm_dir, "tokenizer.json"), scoring="maxsim")
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer)
  assert not os.path.exists(os.path.join(out, "modules.json"))
  with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
    assert "late interaction" in f.read()
  assert models.export_spec(out).scoring == "maxsim"


def test_export_records_checksums_and_a_changed_file_is_refused(tmp_path, minilm_dir):
  """An export's files are checksummed in optical_jax.json at export; loading it checks
  them, so a changed weight file stops with one line naming it instead of evaluating
  another model (the card may still be rewritten with results)."""
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  spec = _tiny_spec(os.path.join(minilm_dir, "tokenizer.json"))
  m = models.load_model(spec)
  out = str(tmp_path / "student")
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer, extra=EXTRA)
  files = models.read_export_spec(out)["files"]
  assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json"} <= set(files)
  assert "README.md" not in files and models.SPEC_FILE not in files
  with open(os.path.join(out, "README.md"), "a", encoding="utf-8") as f:
    f.write("\nA note added to the card after export.\n")   # the card is not checksummed
  models.load_model(models.export_spec(out))
  weights_file = os.path.join(out, "model.safetensors")
  with open(weights_file, "r+b") as f:
    f.seek(os.path.getsize(weights_file) - 8)
    f.write(b"\x00" * 8)
  with pytest.raises(InputError, match="model.safetensors does not match the checksum"):
    models.load_model(models.export_spec(out))
  os.remove(weights_file)
  with pytest.raises(InputError, match="model.safetensors is missing"):
    models.load_model(models.export_spec(out))
