"""Method configuration: one dataclass for every method, validated before any SVD runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from sorsa_repro import method_registry as registry

# from the method registry (sorsa_repro/method_registry.py): one entry per method
METHODS = registry.names()
UNTRAINED_METHODS = registry.untrained_methods()  # base: the pretrained model, the floor of every table
DATA_METHODS = registry.data_methods()  # EVA, CorDA: initialised from training data (``init_examples``)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# the settings of one method (MethodConfig fields), refused with any other
METHOD_FIELDS = {"kasa_beta": "kasa", "kasa_gamma": "kasa", "first_block": "soma", "lora_rank": "salt"}
# KaSA's defaults when unset: peft's KasaConfig defaults, the official code's (juyongjiang/KaSA main.py --beta 1e-4
# --gemma 1e-3, its GLUE runs)
KASA_DEFAULTS = {"kasa_beta": 1e-4, "kasa_gamma": 1e-3}
# settings users look for under method. that live elsewhere (a method key would be silently ignored)
SET_ELSEWHERE = {"weight_decay": "train.weight_decay", "batch_size": "train.batch_size", "seed": "seed"}


@dataclass
class MethodConfig:
    name: str = field(metadata={"help": "one of METHODS (pissa_niter_K: PiSSA with a randomized SVD)"})
    rank: int = field(default=128, metadata={"help": "adapter rank r"})
    alpha: float | None = field(
        default=None,
        metadata={"help": "scale = alpha / r; None gives scale 1 for SORSA and alpha = r for PEFT methods"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGETS, metadata={"help": "module name suffixes to adapt"}
    )
    svd: str = field(
        default="exact",
        metadata={
            "help": "exact | randomized (SORSA, SVFit, PiSSA); MiLoRA's minor components need the exact one"
        },
    )
    niter: int = field(default=4, metadata={"help": "subspace iterations of the randomized SVD"})
    adapter_dtype: str = field(default="float32", metadata={"help": "dtype of SORSA's factors"})
    config: str | None = field(
        default=None, metadata={"help": "method=peft: a peft adapter_config.json (or its folder)"}
    )
    residual_dtype: str | None = field(
        default=None,
        metadata={
            "help": "train.precision=reference: dtype of the frozen residual W_res (SORSA, PiSSA: bfloat16)"
        },
    )
    config_sha256: str | None = field(
        default=None,
        metadata={"help": "method=peft: the adapter config file's content (the run's identity only)"},
    )
    init_examples: int = field(
        default=0,
        metadata={
            "help": "EVA, CorDA: training examples their init reads (the first of the run's epoch 0); 0 otherwise"
        },
    )
    kasa_beta: float | None = field(
        default=None,
        metadata={"help": "KaSA: beta, the coefficient of sum(d^2) over its learnable singular values d"},
    )
    kasa_gamma: float | None = field(
        default=None,
        metadata={"help": "KaSA: gamma, the coefficient of ||B^T B - I_r||_F + ||A A^T - I_r||_F"},
    )
    first_block: int | None = field(
        default=None,
        metadata={
            "help": "SoMA: the first adapted decoder block (the blocks before it stay frozen); null: round(L / 3) of "
            "L blocks, the paper's 8 of 24 (methods/soma.py)"
        },
    )
    lora_rank: int | None = field(
        default=None,
        metadata={"help": "SALT: the rank of its low-rank update inside the remaining singular subspace"},
    )

    def __post_init__(self):
        match = re.fullmatch(r"pissa_niter_(\d+)", str(self.name))
        if match:
            self.name, self.svd, self.niter = "pissa", "randomized", int(match.group(1))
        registry.get(self.name)  # an unknown name fails here, naming the known ones
        if (self.name == "peft") != (self.config is not None):
            raise ValueError(
                "method.config (a peft adapter_config.json) goes with method=peft, and only with it"
            )
        if not isinstance(self.rank, int) or self.rank < (0 if self.name == "peft" else 1):
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if (self.name in DATA_METHODS) != (self.init_examples != 0):
            raise ValueError(
                f"method.init_examples={self.init_examples!r}: EVA and CorDA initialise from training data and need "
                "init_examples >= 1 (the training task feeds them); other methods take none"
            )
        if self.init_examples < 0:
            raise ValueError(f"init_examples must be >= 0, got {self.init_examples!r}")
        for key, owner in METHOD_FIELDS.items():  # a method's own settings, and only with it
            if getattr(self, key) is not None and self.name != owner:
                raise ValueError(
                    f"method.{key}={getattr(self, key)!r}: it goes with method={owner}, and only with it"
                )
        if self.name == "kasa":
            for key, default in KASA_DEFAULTS.items():
                setattr(self, key, default if getattr(self, key) is None else float(getattr(self, key)))
        if self.name == "salt" and self.lora_rank is None:
            self.lora_rank = self.rank  # SALT's LoRA rank: the suite's r unless set
        for key in ("kasa_beta", "kasa_gamma"):
            if getattr(self, key) is not None and not getattr(self, key) >= 0:
                raise ValueError(f"method.{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("first_block", "lora_rank"):
            value = getattr(self, key)
            if value is not None and (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (1 if key == "lora_rank" else 0)
            ):
                raise ValueError(
                    f"method.{key} must be an integer >= {1 if key == 'lora_rank' else 0}, got {value!r}"
                )
        if self.name == "miss" and self.alpha is not None:
            raise ValueError("MiSS has no scale: leave alpha unset (null)")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (or null for scale 1), got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.svd not in ("exact", "randomized"):
            raise ValueError(f"svd must be 'exact' or 'randomized', got {self.svd!r}")
        if self.niter < 0:
            raise ValueError(f"niter must be >= 0, got {self.niter!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("target_modules is empty")

    @property
    def scale(self) -> float:
        """SORSA's scale (alpha / r, or 1 when alpha is unset)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @classmethod
    def from_mapping(cls, cfg: Mapping | MethodConfig) -> MethodConfig:
        if isinstance(cfg, MethodConfig):
            return cfg
        cfg = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            hints = "".join(
                f"; set {key} as {SET_ELSEWHERE[key]}" for key in sorted(unknown & set(SET_ELSEWHERE))
            )
            raise ValueError(f"unknown method config keys {sorted(unknown)}{hints}; known: {sorted(known)}")
        if "name" not in cfg:
            raise ValueError("method config needs a 'name'")
        return cls(**{k: v for k, v in cfg.items() if k in known})
