"""The ``key=value`` command lines of the entry points that are not Hydra apps (replicate, sorsa-report).

They read like Hydra's (``experiment=mini seeds=0,1``), answer ``-h``/``--help`` with every key and its
meaning, and reject unknown or malformed arguments with the usage (exit code 2) before any work starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class KeyValueCli:
    prog: str
    summary: str  # what the command does: the first lines of --help
    keys: dict[str, str]  # key -> help text (with its default)
    commands: dict[str, str] = field(default_factory=dict)  # first positional word -> help; empty: none
    passthrough: str = ""  # non-empty: other key=value arguments are allowed and go there (its help)

    def usage(self) -> str:
        head = f"usage: {self.prog}"
        if self.commands:
            head += f" {{{','.join(self.commands)}}}"
        head += " [key=value ...]"
        lines = [head, "", self.summary]
        if self.commands:
            lines += ["", "commands:", *(f"  {c:<12} {text}" for c, text in self.commands.items())]
        lines += ["", "keys:", *(f"  {k:<18} {text}" for k, text in self.keys.items())]
        if self.passthrough:
            lines += ["", f"other key=value arguments: {self.passthrough}"]
        return "\n".join(lines)

    def fail(self, message: str):
        print(f"{self.prog}: error: {message}\n\n{self.usage()}", file=sys.stderr)
        raise SystemExit(2)

    def parse(self, argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
        """(command or None, {key: value} of the known keys, the other arguments in order)."""
        if any(a in ("-h", "--help") for a in argv):
            print(self.usage())
            raise SystemExit(0)
        command = None
        if self.commands:
            if not argv or argv[0] not in self.commands:
                self.fail(f"the first argument must be one of {', '.join(self.commands)}")
            command, argv = argv[0], argv[1:]
        values, rest = {}, []
        for arg in argv:
            key, sep, value = arg.partition("=")
            if key in self.keys and sep:
                values[key] = value
            elif self.passthrough and not arg.startswith("-"):  # a Hydra override (key=v, +key=v, ~key)
                rest.append(arg)
            else:
                self.fail(f"unknown or malformed argument {arg!r}")
        return command, values, rest
