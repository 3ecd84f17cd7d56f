"""The Alpaca/MetaMath prompt used for training and evaluation (DESIGN.md section 3)."""

from __future__ import annotations

# Bump when the template or the eval suffix changes; stored with every result.
PROMPT_VERSION = "alpaca-metamath-v1"

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{query}\n\n### Response:"
)
EVAL_SUFFIX = " Let's think step by step."


def build_prompt(query: str, for_eval: bool = False) -> str:
    """The prompt for `query`; evaluation prompts end with " Let's think step by step."."""
    prompt = PROMPT_TEMPLATE.format(query=query)
    return prompt + EVAL_SUFFIX if for_eval else prompt
