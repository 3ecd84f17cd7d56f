"""How ``sorsa-train`` and ``sorsa-evaluate`` report a command they cannot run: one line, printed once, exit
code 2, with the closest valid key or option; the traceback only under ``SORSA_VERBOSE=1`` (or
``HYDRA_FULL_ERROR=1``).

Two kinds of errors end a command before it starts:

- Hydra's composition errors (an unknown key without ``+``, an unknown option of a config group, a malformed
  override). ``run_entry_point`` sets ``HYDRA_FULL_ERROR=1`` around Hydra so that Hydra raises them instead of
  printing its own advice, and describes them here (``describe``).
- errors of the composed config (validation, data, the run folder), raised inside the Hydra task function.
  The task function turns them into ``UsageExit``, a ``SystemExit``: Hydra lets it through without printing.

Errors after the start (training, generation) are not usage errors: the command prints their traceback once
and exits 1.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable, Iterable

USAGE_EXIT_CODE = 2
# an exception raised before a run started (validation, data, run folder): marked by the training job
NOT_STARTED = "_sorsa_not_started"
# an exception the training job has already logged with its traceback
LOGGED = "_sorsa_logged"
# messages of these types say what to change; others are probably bugs and keep their type name
_SELF_EXPLAINING = (ValueError, LookupError, OSError, TypeError)


class UsageExit(SystemExit):
    """A command that cannot run, raised inside a Hydra task function (Hydra lets a SystemExit through and
    prints nothing); ``run_entry_point`` prints its one line. Uncaught, Python prints the message (exit 1)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.message = message
        self.cause = cause


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to a misspelled ``word`` (difflib's ratio >= 0.6), or None."""
    found = difflib.get_close_matches(str(word), sorted({str(c) for c in choices}), n=1)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str], shown: Callable[[str], str] = str) -> str:
    """`` (did you mean X?)`` for the closest choice, or an empty string."""
    close = closest(word, choices)
    return f" (did you mean {shown(close)}?)" if close else ""


def mark(err: BaseException, marker: str) -> BaseException:
    setattr(err, marker, True)
    return err


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: OmegaConf's ``full_key:`` / ``object_type=`` lines and blank lines
    dropped; the type name kept where the message may not say what went wrong."""
    lines = [
        line.strip()
        for line in str(err).splitlines()
        if line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type="))
    ]
    text = " ".join(lines) or type(err).__name__
    if _is_config_error(err) or isinstance(err, _SELF_EXPLAINING):
        return text
    return f"{type(err).__name__}: {text}"


def _is_config_error(err: BaseException) -> bool:
    module = type(err).__module__ or ""
    return module.startswith(("hydra", "omegaconf"))


# ---------------------------------------------------------------------------------- Hydra's composition errors


def known_key_tree(app: str) -> dict[str, frozenset[str]]:
    """{"": top-level keys, section: its keys} that an override may name, for suggestions. ``app``: "train"
    (conf/train.yaml and everything under conf/) or "eval" (conf/eval.yaml: EvalConfig's fields)."""
    import dataclasses

    from sorsa_repro.evaluation.config import EvalConfig

    eval_keys = frozenset(f.name for f in dataclasses.fields(EvalConfig))
    if app == "eval":
        return {"": eval_keys}
    from sorsa_repro.methods.config import MethodConfig
    from sorsa_repro.training.known_keys import known_keys
    from sorsa_repro.training.validate import TRAINING_KEYS

    tree = dict(known_keys())
    tree["method"] = frozenset({f.name for f in dataclasses.fields(MethodConfig)} | set(TRAINING_KEYS))
    tree["evaluate"] = eval_keys - {"run", "model", "out_dir", "adapter"}  # the training run is the target
    tree[""] = tree[""] | {"method", "evaluate"}
    return tree


def unknown_key_message(key: str, tree: dict[str, frozenset[str]]) -> str:
    """``unknown config key train.max_step (did you mean train.max_steps?)``: the first part of the dotted
    key that its section does not know, replaced by the closest known one."""
    parts = key.split(".")
    if parts[0] == "hydra":
        return f"unknown Hydra setting {key} (python -m sorsa_repro.train --help: --cfg hydra shows them)"
    section: str | None = ""
    for i, part in enumerate(parts):
        known = tree.get(section) if section is not None else None
        parent = ".".join(parts[:i])
        if known is None:  # below a key that is no section of its own
            return (
                f"unknown config key {key}: {parent} has no key {part} here; set {parent} whole "
                f"({parent}=...) or add the key with +{key}=..."
            )
        if part not in known:
            close = closest(part, known)
            hint = f" (did you mean {'.'.join([*parts[:i], close, *parts[i + 1 :]])}?)" if close else ""
            return f"unknown config key {key}{hint}: no file under conf/ defines it"
        section = part if i == 0 else None  # sections are one level deep
    return f"config key {key} cannot be set this way"


def describe(err: BaseException, app: str) -> str:
    """One line for an error of Hydra's composition, with the closest valid key or option."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = list(err.options or [])
        hint = did_you_mean(option, options, lambda c: f"{group}={c}")
        listed = f"; options: {', '.join(options)}" if options else ""
        return f"{group}={option}: no such option in conf/{group}/{hint}{listed}"
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if isinstance(err, ConfigCompositionException) and full_key and "not in struct" in str(cause):
        return unknown_key_message(str(full_key), known_key_tree(app))
    return one_line(err)


# ---------------------------------------------------------------------------------- the entry points


def report(prog: str, message: str, err: BaseException | None = None, usage: str | None = None) -> None:
    """Print what ended the command, once: the traceback first when asked for, then the one line."""
    from sorsa_repro.console import verbose

    if err is not None and (verbose() or _user_full_error):
        traceback.print_exception(err, file=sys.stderr)
    if usage:
        print(usage, file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


_user_full_error = False  # the user set HYDRA_FULL_ERROR: Hydra's full traceback as well


def run_entry_point(prog: str, app: str, main: Callable[[], object]) -> None:
    """Run a Hydra ``main``; its usage errors and Hydra's composition errors end in one line, exit code 2."""
    global _user_full_error
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    previous = os.environ.get("HYDRA_FULL_ERROR")
    _user_full_error = previous not in (None, "", "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing advice we replace
    try:
        main()
    except UsageExit as err:
        report(prog, err.message, err.cause or err)
        raise SystemExit(USAGE_EXIT_CODE) from None
    except (HydraException, OmegaConfBaseException) as err:  # composition: nothing has started
        report(prog, describe(err, app), err)
        raise SystemExit(USAGE_EXIT_CODE) from None
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def as_exit(err: Exception) -> BaseException:
    """What a Hydra task function raises for ``err``: a ``UsageExit`` for an error before the run started,
    exit code 1 for one already logged with its traceback, else ``err`` itself."""
    if getattr(err, NOT_STARTED, False):
        return UsageExit(one_line(err), err)
    if getattr(err, LOGGED, False):
        return SystemExit(1)
    return err
