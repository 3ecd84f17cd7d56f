"""Unknown config keys fail: ``+train.max_step=4`` (for ``max_steps``) would otherwise be ignored silently.

The schema is the config files themselves: a section's known keys are the keys any file under conf/ sets in
it (conf/train.yaml, the options of its group, experiment/sweep/arm files). The ``method`` and ``evaluate``
sections are checked by their dataclasses (``MethodConfig``, ``EvalConfig``), which know every field.
"""

from __future__ import annotations

import difflib
from functools import cache

import yaml
from omegaconf import DictConfig

from sorsa_repro.layout import CONF_DIR

CHECKED_SECTIONS = ("train", "data", "model", "trainer", "logger")
OPTIONAL = {"data": {"data_dir"}, "trainer": {"num_nodes"}}  # read with .get(): valid where no file sets them


@cache
def known_keys() -> dict[str, frozenset[str]]:
    """{"": top-level keys, section: keys} from every yaml file under conf/ (hydra's own files aside)."""
    known: dict[str, set[str]] = {
        "": {"hydra", "defaults"},
        **{s: set(OPTIONAL.get(s, ())) for s in CHECKED_SECTIONS},
    }
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group.startswith("hydra") or path.name == "eval.yaml":  # Hydra's own, and the evaluation app's
            continue
        text = path.read_text(encoding="utf-8")
        package = "_global_" if group == "." or "# @package _global_" in text else group
        node = yaml.safe_load(text) or {}
        if package != "_global_":
            known[""].add(package)
            node = {package: node}
        for key, value in node.items():
            known[""].add(key)
            if key in known and key and isinstance(value, dict):
                known[key].update(value.keys())
    return {k: frozenset(v) for k, v in known.items()}


def check_known_keys(cfg: DictConfig) -> None:
    """Raise ValueError naming each key no config file defines, with the closest known key."""
    known = known_keys()
    unknown = [(k, known[""]) for k in cfg if k not in known[""]]
    for section in CHECKED_SECTIONS:
        if isinstance(cfg.get(section), DictConfig):
            unknown += [(f"{section}.{k}", known[section]) for k in cfg[section] if k not in known[section]]
    if unknown:
        raise ValueError("; ".join(_explain(key, choices) for key, choices in unknown))


def _explain(key: str, choices) -> str:
    prefix, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return f"unknown config key {key}{hint}: no file under conf/ defines it"
