"""Config trees as plain data: keys in insertion order, JSON-able copies, dotted flattening.

`ml_collections.ConfigDict.keys()` sorts its keys; where order means something (the
systems of an evaluation, the axes of a study) `keys_in_order` keeps the order they
were written in. `plain` makes a JSON-able copy; `flatten` turns nested mappings into
dotted keys (`loss.ot.epsilon`) for comparisons and tables.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import ml_collections


def keys_in_order(node) -> List[str]:
  """Keys in insertion order (ConfigDict.keys() sorts them)."""
  if isinstance(node, ml_collections.ConfigDict):
    return list(json.loads(node.to_json_best_effort()))
  return list(node)


def plain(node) -> Any:
  """A JSON-able copy, keeping insertion order."""
  if isinstance(node, ml_collections.ConfigDict):
    return json.loads(node.to_json_best_effort())
  return json.loads(json.dumps(node, default=str))


def flatten(tree, prefix: str = "") -> Dict[str, Any]:
  """Nested mappings -> {'a.b.c': leaf}; an empty mapping inside is a leaf, at the top
  nothing."""
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out: Dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
