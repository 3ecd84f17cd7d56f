"""Whether W&B can work online here: the one place that decides, for the training logger and the report.

Online when an API key exists (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc) and ``WANDB_MODE``
does not say offline/disabled, as W&B users expect; offline (``wandb sync`` uploads later) otherwise.
"""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse


def offline_reason(env=None) -> str | None:
    """Why the report cannot be built online, or None when a key is available and mode allows it."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if env.get("WANDB_API_KEY"):
        return None
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:  # `wandb login` stores the key in ~/.netrc
        if netrc.netrc(env.get("NETRC") or os.path.expanduser("~/.netrc")).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "no W&B API key: WANDB_API_KEY unset and no `wandb login` entry in ~/.netrc"


def logger_mode(asked: str | None, env=None) -> tuple[str, str]:
    """(mode for the W&B logger, why): what the user asked (``logger.mode`` or ``WANDB_MODE``), else online
    when credentials exist, else offline."""
    env = os.environ if env is None else env
    if asked:
        return str(asked), "logger.mode"
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"], "WANDB_MODE"
    reason = offline_reason(env)
    return ("offline", reason) if reason else ("online", "W&B credentials found")
