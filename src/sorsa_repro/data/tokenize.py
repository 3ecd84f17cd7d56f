"""Tokenisation with prompt masking, and a right-padding collator.

Prompt and response are tokenised separately and concatenated, so the mask boundary is exact:
prompt = tokenizer(build_prompt(query)) with the tokenizer's special tokens (BOS where it adds one,
as evaluation prompts get), response = tokenizer(response, no special tokens) + EOS. Labels are -100
on prompt tokens (and on padding), so the loss covers the response and its EOS only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .prompt import build_prompt

IGNORE_INDEX = -100
TRUNCATION_MODES = ("joint", "separate")
LONG_PROMPT_MODES = ("error", "drop")


class PromptTooLongError(ValueError):
    """A prompt does not fit max_length (a few MATH problems with Asymptote code exceed 512 tokens)."""


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (Llama-2 has no pad token; padding is masked anyway)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return pid


def combine(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    max_length: int,
    truncation: str = "joint",
    example_id: str | None = None,
) -> dict:
    """input_ids/labels from token ids; `response_ids` already ends with EOS.

    joint: prompt + response cut to `max_length` together (PiSSA); separate: prompt and response each
    cut to `max_length` on their own, so a sequence can reach 2 x max_length (SORSA reference).
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"unknown truncation {truncation!r}; expected one of {TRUNCATION_MODES}")
    n_prompt = len(prompt_ids)
    where = f" (example {example_id})" if example_id is not None else ""
    if n_prompt > max_length or (truncation == "joint" and n_prompt >= max_length):
        cut = "the whole response would be cut off" if n_prompt == max_length else "it exceeds max_length"
        raise PromptTooLongError(
            f"prompt of {n_prompt} tokens{where} does not fit max_length={max_length} ({truncation} "
            f"truncation): {cut}; raise max_length (data.max_length) or skip such examples "
            "(long_prompts='drop')"
        )
    if truncation == "joint":
        response = list(response_ids[: max_length - n_prompt])
    else:
        response = list(response_ids[:max_length])
    return {
        "input_ids": list(prompt_ids) + response,
        "labels": [IGNORE_INDEX] * n_prompt + response,
    }


def encode_examples(
    tokenizer,
    examples: Sequence[dict],
    max_length: int,
    truncation: str = "joint",
    long_prompts: str = "error",
    batch_size: int = 1000,
) -> list[dict]:
    """Encode `{query, response}` examples with the training prompt; batched for fast tokenizers.

    Each result has input_ids, labels and the example's id. `long_prompts="drop"` skips examples whose
    prompt does not fit instead of raising PromptTooLongError.
    """
    if long_prompts not in LONG_PROMPT_MODES:
        raise ValueError(f"unknown long_prompts {long_prompts!r}; expected one of {LONG_PROMPT_MODES}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the training target must end with one")
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = tokenizer([build_prompt(e["query"]) for e in chunk], add_special_tokens=True)["input_ids"]
        responses = tokenizer([e["response"] for e in chunk], add_special_tokens=False)["input_ids"]
        for e, p, r in zip(chunk, prompts, responses, strict=True):
            try:
                out.append(
                    {**combine(p, list(r) + [eos], max_length, truncation, e.get("id")), "id": e.get("id")}
                )
            except PromptTooLongError:
                if long_prompts == "error":
                    raise
    return out


def encode_example(tokenizer, query: str, response: str, max_length: int, truncation: str = "joint") -> dict:
    return encode_examples(tokenizer, [{"query": query, "response": response}], max_length, truncation)[0]


class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, attention_mask 0 on padding."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        }
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            batch["labels"][i, :n] = torch.tensor(f["labels"], dtype=torch.long)
            batch["attention_mask"][i, :n] = 1
        return batch
