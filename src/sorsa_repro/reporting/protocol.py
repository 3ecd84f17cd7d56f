"""The protocol check: runs averaged together or compared in one table must share one protocol.

A run's protocol is result.json's "protocol" block plus, per benchmark, the eval settings in
``EVAL_KEYS`` and the version of each grader. A benchmark or grader that a run lacks is a missing
result (reported elsewhere), not a protocol difference; a "protocol" key that a run lacks is one.
"""

from __future__ import annotations

import json

EVAL_KEYS = ("n", "limit", "max_new_tokens", "generation_protocol", "prompt_version")
ABSENT = "<absent>"


class ProtocolMismatchError(ValueError):
    """Raised instead of averaging or comparing runs evaluated under different protocols."""


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}", out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def protocol_of(result: dict) -> dict[str, str]:
    """Flat ``{dotted key: JSON-encoded value}`` of everything that must match between runs."""
    out: dict[str, str] = {}
    _flatten(result.get("protocol", {}), "protocol", out)
    for bench, ev in result.get("eval", {}).items():
        for key in EVAL_KEYS:
            out[f"eval.{bench}.{key}"] = json.dumps(ev.get(key), default=str)
        for grader, score in ev.get("scores", {}).items():
            out[f"eval.{bench}.scores.{grader}.version"] = json.dumps(score.get("version"), default=str)
    return out


def protocol_differences(runs) -> dict[str, dict[str, list[str]]]:
    """``{key: {value: [run names]}}`` for every key on which the runs disagree."""
    flat = {run.name: protocol_of(run.result) for run in runs}
    keys = sorted({k for f in flat.values() for k in f})
    diffs = {}
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for name, f in flat.items():
            if key in f or key.startswith("protocol."):
                by_value.setdefault(f.get(key, ABSENT), []).append(name)
        if len(by_value) > 1:
            diffs[key] = by_value
    return diffs


def check_protocol(runs) -> None:
    """Raise ``ProtocolMismatchError`` naming the runs and keys that differ."""
    diffs = protocol_differences(runs)
    if not diffs:
        return
    lines = [f"{len(runs)} runs do not share one protocol; refusing to average or compare them:"]
    for key, by_value in diffs.items():
        parts = [f"{value} in {', '.join(sorted(names))}" for value, names in sorted(by_value.items())]
        lines.append(f"  {key}: " + "; ".join(parts))
    lines.append("Re-run or re-evaluate the odd runs, or move them to their own experiment folder.")
    raise ProtocolMismatchError("\n".join(lines))


def shared_protocol(runs) -> dict[str, str]:
    """The flat protocol common to ``runs`` (keys present in any run; runs must agree)."""
    out: dict[str, str] = {}
    for run in runs:
        out.update(protocol_of(run.result))
    return dict(sorted(out.items()))
