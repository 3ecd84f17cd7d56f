"""Tokenisation with prompt masking, and a right-padding collator.

Two tokenisations, each the one a reference used (labels are -100 on prompt tokens and padding, so the
loss covers the response and its EOS only; the prompt gets the tokenizer's special tokens, BOS where it
adds one, as evaluation prompts do):

- ``concatenated`` (PiSSA, GraphPKU/PiSSA@e2b128e ``train.py:85-121``, whose rows the SORSA paper copied
  for full FT, LoRA and PiSSA): the string prompt + response is tokenised as one, EOS appended, cut to
  ``max_length`` (joint truncation); the prompt's length is that of the prompt tokenised alone.
- ``separate`` (SORSA, Gunale0926/SORSA@809cca0 ``dataset.py:85-123``): prompt and response + EOS are
  tokenised on their own and concatenated, so the mask boundary is exact; with ``separate`` truncation each
  part is cut to ``max_length`` (a sequence can reach 2 x max_length), with ``joint`` the two together.

The first response token can differ between them (Llama: ``Response:The`` vs a separately tokenised
``▁The``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .prompt import build_prompt

IGNORE_INDEX = -100
TRUNCATION_MODES = ("joint", "separate")
TOKENIZATION_MODES = ("concatenated", "separate")
LONG_PROMPT_MODES = ("error", "drop", "keep")


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
    long_prompts: str = "error",
) -> dict:
    """input_ids/labels from token ids; `response_ids` already ends with EOS.

    joint: prompt + response cut to `max_length` together (PiSSA); separate: prompt and response each
    cut to `max_length` on their own, so a sequence can reach 2 x max_length (SORSA reference).
    A prompt that leaves no room for the response raises PromptTooLongError, unless ``long_prompts`` is
    "keep": the example is cut as the references cut it (joint: its labels are all masked, so it adds no
    loss; separate: the prompt's end is cut off), as both references keep such examples in the epoch.
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"unknown truncation {truncation!r}; expected one of {TRUNCATION_MODES}")
    n_prompt = len(prompt_ids)
    where = f" (example {example_id})" if example_id is not None else ""
    too_long = n_prompt > max_length or (truncation == "joint" and n_prompt >= max_length)
    if too_long and long_prompts != "keep":
        cut = "the whole response would be cut off" if n_prompt == max_length else "it exceeds max_length"
        raise PromptTooLongError(
            f"prompt of {n_prompt} tokens{where} does not fit max_length={max_length} ({truncation} "
            f"truncation): {cut}; raise max_length (data.max_length), skip such examples "
            "(long_prompts=drop) or keep them as the references do (long_prompts=keep)"
        )
    prompt = list(prompt_ids[:max_length])
    if truncation == "joint":
        response = list(response_ids[: max(0, max_length - n_prompt)])
    else:
        response = list(response_ids[:max_length])
    return {
        "input_ids": prompt + response,
        "labels": [IGNORE_INDEX] * len(prompt) + response,
    }


def encode_examples(
    tokenizer,
    examples: Sequence[dict],
    max_length: int,
    truncation: str = "joint",
    long_prompts: str = "error",
    batch_size: int = 1000,
    tokenization: str = "separate",
) -> list[dict]:
    """Encode `{query, response}` examples with the training prompt; batched for fast tokenizers.

    Each result has input_ids, labels and the example's id. `long_prompts="drop"` skips examples whose
    prompt does not fit instead of raising PromptTooLongError; "keep" keeps them (see ``combine``).
    """
    if long_prompts not in LONG_PROMPT_MODES:
        raise ValueError(f"unknown long_prompts {long_prompts!r}; expected one of {LONG_PROMPT_MODES}")
    check_modes(tokenization, truncation)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the training target must end with one")
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompt_texts = [build_prompt(e["query"]) for e in chunk]
        prompts = tokenizer(prompt_texts, add_special_tokens=True)["input_ids"]
        if tokenization == "concatenated":
            texts = [p + e["response"] for p, e in zip(prompt_texts, chunk, strict=True)]
            joined = tokenizer(texts, add_special_tokens=True)["input_ids"]
            # the joined tokens throughout; the first len(prompt alone) of them are masked, as PiSSA does
            responses = [ids[len(p) :] for ids, p in zip(joined, prompts, strict=True)]
            prompts = [ids[: len(p)] for ids, p in zip(joined, prompts, strict=True)]
        else:
            responses = tokenizer([e["response"] for e in chunk], add_special_tokens=False)["input_ids"]
        for e, p, r in zip(chunk, prompts, responses, strict=True):
            try:
                encoded = combine(p, list(r) + [eos], max_length, truncation, e.get("id"), long_prompts)
                out.append({**encoded, "id": e.get("id")})
            except PromptTooLongError:
                if long_prompts == "error":
                    raise
    return out


def check_modes(tokenization: str, truncation: str) -> None:
    if tokenization not in TOKENIZATION_MODES:
        raise ValueError(f"unknown tokenization {tokenization!r}; expected one of {TOKENIZATION_MODES}")
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"unknown truncation {truncation!r}; expected one of {TRUNCATION_MODES}")
    if tokenization == "concatenated" and truncation != "joint":
        raise ValueError("tokenization=concatenated cuts the one joined sequence: use truncation=joint")


def encode_example(tokenizer, query: str, response: str, max_length: int, truncation: str = "joint") -> dict:
    return encode_examples(tokenizer, [{"query": query, "response": response}], max_length, truncation)[0]


class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, attention_mask 0 on padding; adds
    ``n_tokens`` and ``n_label_tokens`` (python ints: tokens, and tokens with a loss, of the batch)."""

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
        # counted here, on the host, so that training never waits on the device to read them
        batch["n_tokens"] = sum(len(f["input_ids"]) for f in features)
        batch["n_label_tokens"] = sum(sum(t != IGNORE_INDEX for t in f["labels"][1:]) for f in features)
        return batch
