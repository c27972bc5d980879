"""Config files: parsing of their arguments, big_vision style
(``default.py:flat,quickstart,seed=3``), and the repository's default config for
code that holds only a saved one.

Bare words select from a fixed set of choices (``flat`` sets ``task=flat``);
``key=value`` pairs are typed from the defaults. Unknown words raise.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _typed(name, value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("true", "1", "yes"):
      return True
    if value.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"config argument {name}={value!r}: expected true or false")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, choices: dict[str, tuple[str, ...]], **defaults):
  """Parses ``arg`` into a ConfigDict of the given defaults.

  Args:
    arg: the text after ``:`` in ``--config=path.py:arg`` (or None).
    choices: for bare words, ``{field: allowed values}``; a bare word sets the
      field whose choices contain it.
    **defaults: every accepted field and its default value (gives the type).
  Returns:
    ``ml_collections.ConfigDict`` with one entry per default.
  """
  out = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if "=" in token:
      key, value = token.split("=", 1)
      if key not in defaults:
        raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
      out[key] = _typed(key, value, defaults[key])
      continue
    fields = [f for f, allowed in choices.items() if token in allowed]
    if not fields:
      allowed = sorted(v for vs in choices.values() for v in vs)
      raise ValueError(f"unknown config variant {token!r}; choose from {allowed}")
    out[fields[0]] = token
  for field, allowed in choices.items():
    if out[field] not in allowed:
      raise ValueError(f"config argument {field}={out[field]!r} not in {allowed}")
  return ml_collections.ConfigDict(out)


def default_config(arg: str) -> ml_collections.ConfigDict | None:
  """``get_config(arg)`` of ``configs/default.py`` (``DEFAULT_FILE``), or None when the package
  runs without its repository (an installed wheel has no ``configs/``)."""
  if not DEFAULT_FILE.is_file():
    return None
  spec = importlib.util.spec_from_file_location("flatai_configs_default", DEFAULT_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
