"""The method registry: one entry per method, read by everything that needs to know a method.

An entry (``Method``) holds the method's name (the ``method.name`` of its yaml), display name, source, the
facts other code branches on (does it change the base weights at init, its regularizer and of which kind, is it
the untrained model, does it read training data at init, its adapter format, its rank limit) and where its code
lives, as ``"module:function"`` references resolved on first use. The entries are plain data, so that reading
them (tables, display names, the run identity) imports neither torch nor peft: ``sorsa_repro.reporting`` reads
display names from here without loading a model library (it lives outside ``sorsa_repro.methods``, whose
package import loads torch and peft).

Who reads it: ``methods.apply_method`` (``apply``), ``methods.validate`` (``rank_limit``, ``check``),
``methods.trainable_params_on_meta`` (``count``), ``methods.save_adapter`` / ``load_adapter`` and the training
task's exports (``adapter``, ``lora_export``), ``methods.peft_inits.modifies_base`` (``changes_base``),
``training.validate`` / ``training.setup`` / ``training.ortho`` (``regularizer``, ``training``,
``training_keys``),
``training.identity`` (``untrained``), ``reporting.aggregate`` (``display``, ``untrained``).

Adding a method: its implementation module under ``sorsa_repro/methods/`` (``apply`` and, where it needs them,
``count`` and ``training``), one entry below, one ``conf/method/<name>.yaml``. A LoRA variant that peft already
implements needs no module: a branch of ``peft_methods.lora_config`` and an entry with
``apply=PEFT_APPLY``, as LoRA, PiSSA, DoRA, OLoRA, MiCA, EVA, CorDA and MiSS have.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module

ADAPTER_FORMATS = ("peft", "sorsa", "layers")  # peft_io, sorsa_io, layers_io
RANK_LIMITS = ("min", "below_min", "in", "none")
REGULARIZERS = ("orthonormal", "loss")


@dataclass(frozen=True)
class Method:
    name: str  # method.name in conf/method/<name>.yaml
    display: str  # tables, figures, claims
    source: str  # arXiv id and official code (file), or where this suite defines it
    apply: str | None  # "module:function"(model, cfg, targets, batches, initial) -> adapted model
    changes_base: bool = False  # the frozen base weights differ from the pretrained ones after init
    # "orthonormal" (SORSA: training/ortho.py modes) | "loss" (added to the loss: training hooks)
    regularizer: str | None = None
    untrained: bool = False  # the pretrained model as it is: no optimiser, one run whatever the seed
    data_init: bool = False  # initialised from training data (``init_examples``)
    adapter: str | None = None  # adapter format (ADAPTER_FORMATS); None: no adapter (merged/ is the export)
    lora_export: bool = False  # also adapter_lora/: its weight change as a standard peft LoRA
    rank_limit: str = "min"  # r <= min(out, in) | r < min(out, in) | r <= in | no limit
    check: str | None = None  # "module:function"(model, cfg, targets): more checks before any SVD
    count: str | None = None  # "module:function"(meta model, cfg, targets) -> (trainable, total)
    # "module:function"(method section, total steps) -> methods.hooks.MethodHooks (the training module calls it)
    training: str | None = None
    training_keys: tuple[str, ...] = ()  # method-section keys its training hooks read (not MethodConfig's)

    def __post_init__(self):
        if self.adapter not in (None, *ADAPTER_FORMATS):
            raise ValueError(f"{self.name}: adapter format {self.adapter!r} not in {ADAPTER_FORMATS}")
        if self.rank_limit not in RANK_LIMITS:
            raise ValueError(f"{self.name}: rank_limit {self.rank_limit!r} not in {RANK_LIMITS}")
        if self.regularizer not in (None, *REGULARIZERS):
            raise ValueError(f"{self.name}: regularizer {self.regularizer!r} not in {REGULARIZERS}")
        if self.lora_export and self.adapter is None:
            raise ValueError(f"{self.name}: a LoRA export needs an adapter")


PEFT_APPLY = "sorsa_repro.methods.peft_methods:apply_entry"
PEFT_COUNT = "sorsa_repro.methods.peft_layers:count_entry"
OWN_COUNT = "sorsa_repro.methods:count_by_applying"  # own layers build on the meta device

ENTRIES = (
    Method("base", "Base model (untrained)", "the pretrained model, not trained (the floor of every table)",
           "sorsa_repro.methods.full:apply_base_entry", untrained=True, rank_limit="none",
           count=OWN_COUNT),
    Method("full", "Full FT", "full fine-tuning (the SORSA and PiSSA papers' baseline)",
           "sorsa_repro.methods.full:apply_full_entry", rank_limit="none", count=OWN_COUNT),
    Method("lora", "LoRA", "arXiv 2106.09685; peft LoraConfig (init_lora_weights=True)", PEFT_APPLY,
           adapter="peft", count=PEFT_COUNT),
    Method("pissa", "PiSSA", "arXiv 2404.02948; peft init_lora_weights=pissa", PEFT_APPLY, changes_base=True,
           adapter="peft", count=PEFT_COUNT),
    Method("dora", "DoRA", "arXiv 2402.09353; peft use_dora=True", PEFT_APPLY, adapter="peft", count=PEFT_COUNT),
    Method("olora", "OLoRA", "arXiv 2406.01775; peft init_lora_weights=olora", PEFT_APPLY, changes_base=True,
           adapter="peft", count=PEFT_COUNT),
    Method("sorsa", "SORSA", "arXiv 2409.00055; Gunale0926/SORSA (this suite's own factored layer, sorsa.py)",
           "sorsa_repro.methods.sorsa:apply_entry", changes_base=True, regularizer="orthonormal",
           adapter="sorsa", lora_export=True, count=OWN_COUNT),
    Method("peft", "PEFT config", "any peft adapter_config.json (method.config): peft's own init",
           PEFT_APPLY, adapter="peft", rank_limit="none", check="sorsa_repro.methods.peft_methods:check_entry",
           count=PEFT_COUNT),
    Method("mica", "MiCA", "peft init_lora_weights=mica", PEFT_APPLY, adapter="peft", count=PEFT_COUNT),
    Method("miss", "MiSS", "arXiv 2409.15371; peft MissConfig", PEFT_APPLY, adapter="peft", rank_limit="in",
           count=PEFT_COUNT),
    Method("eva", "EVA", "arXiv 2410.07170; peft init_lora_weights=eva", PEFT_APPLY, data_init=True,
           adapter="peft", count=PEFT_COUNT),
    Method("corda", "CorDA", "arXiv 2406.05223; peft init_lora_weights=corda (IPM)", PEFT_APPLY,
           changes_base=True, data_init=True, adapter="peft", count=PEFT_COUNT),
    Method("milora", "MiLoRA", "arXiv 2406.09044; this suite's init on a peft LoRA (peft_inits.init_milora)",
           PEFT_APPLY, changes_base=True, adapter="peft", count=PEFT_COUNT),
    Method("svfit", "SVFit", "arXiv 2409.05926; SORSA's layer with frozen singular vectors (sorsa.py)",
           "sorsa_repro.methods.sorsa:apply_entry", changes_base=True, adapter="sorsa", lora_export=True,
           count=OWN_COUNT),
    Method("kasa", "KaSA", "arXiv 2412.06071; juyongjiang/KaSA peft/src/peft/tuners/lora/layer.py, main.py; "
           "peft LoraConfig(kasa_config=KasaConfig)", PEFT_APPLY, changes_base=True, regularizer="loss",
           adapter="peft", rank_limit="below_min", count=PEFT_COUNT,
           training="sorsa_repro.methods.kasa:training_hooks"),
    Method("soma", "SoMA", "arXiv 2412.04077; ysj9909/SoMA rein/peft/sora.py (minor components, first blocks "
           "frozen, weight decay annealed)", PEFT_APPLY, changes_base=True, adapter="peft",
           check="sorsa_repro.methods.soma:check_entry", count=PEFT_COUNT,
           training="sorsa_repro.methods.soma:training_hooks",
           training_keys=("weight_decay_start", "weight_decay_end")),
    Method("salt", "SALT", "arXiv 2503.16055; BioMedIA-MBZUAI/SALT prompt_adapted_segment_anything/modeling/"
           "SALT.py SALTLinear (this suite's factored layer, salt.py)", "sorsa_repro.methods.salt:apply_entry",
           adapter="layers", lora_export=True, count=OWN_COUNT),
    Method("sst", "SST (fine-tuning)", "arXiv 2405.15481 (a pre-training method; this suite's fine-tuning "
           "adaptation, sst.py)", "sorsa_repro.methods.sst:apply_entry", adapter="layers", count=OWN_COUNT,
           training="sorsa_repro.methods.sst:training_hooks", training_keys=("rounds",)),
)  # fmt: skip

REGISTRY: dict[str, Method] = {m.name: m for m in ENTRIES}
assert len(REGISTRY) == len(ENTRIES), "two entries share a name"


def get(name: str) -> Method:
    """The entry of ``name``; a ValueError names the known methods."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; known: {', '.join(REGISTRY)} (or pissa_niter_K)"
        ) from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def untrained_methods() -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.values() if m.untrained)


def data_methods() -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.values() if m.data_init)


def base_changing_methods() -> tuple[str, ...]:
    """Methods whose init changes the frozen base weights (W_res = W - init part, or KaSA's truncation)."""
    return tuple(m.name for m in REGISTRY.values() if m.changes_base)


def display_names() -> dict[str, str]:
    return {m.name: m.display for m in REGISTRY.values()}


@cache
def resolve(reference: str):
    """The function a ``"module:function"`` reference names (imported on first use)."""
    module, _, attr = reference.partition(":")
    return getattr(import_module(module), attr)
