"""Lightning callback: spectral change of the adapted layers during training, into ``spectral.csv``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from sorsa_repro.analysis.spectral import (
    DEFAULT_EPS,
    DEFAULT_K,
    SVD,
    layer_row,
    parse_layer_name,
    rows_to_frame,
    spectral_metrics,
    svd,
)
from sorsa_repro.results import atomic_write_text
from sorsa_repro.training.distributed import fsdp_root, whole_model

WeightsFn = Callable[[torch.nn.Module], Iterable[tuple[str, torch.Tensor]]]


def _rng_guard():
    # SVDs draw no random numbers; this makes sure nothing the weights function does can either
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [])


_PRETRAINED: dict[tuple, dict[str, SVD]] = {}  # per process: a sweep's runs share their base model's SVDs


def pretrained_svds(
    key: tuple, model: torch.nn.Module, names: Iterable[str], dtype=torch.float32
) -> dict[str, SVD]:
    """SVDs of the named Linear weights of a (not yet adapted) base model, computed once per ``key`` in a
    process (e.g. model name and dtype): every run of a sweep compares with the same pretrained weights,
    and the SVDs are not recomputed for each of them."""
    names = list(names)
    cached = _PRETRAINED.setdefault(key, {})
    with torch.no_grad(), _rng_guard():
        for name in names:
            if name not in cached:
                cached[name] = svd(model.get_submodule(name).weight.detach(), dtype).to("cpu")
    return {name: cached[name] for name in names}


class SpectralCallback(Callback):
    """Every ``every_n_steps`` optimizer steps and at the end of training, compare each adapted layer's
    effective weight with its pretrained one (captured at fit start, before any step) and rewrite
    ``spectral.csv`` (atomically) with one row per (step, layer): step, layer, module, layer_num and the
    metrics of ``spectral_metrics``.

    ``weights_fn(model)`` yields (name, effective dense weight); default
    ``sorsa_repro.methods.effective_weights``; it gets ``pl_module.model`` when that is a module, else
    ``pl_module``. ``path`` defaults to
    ``<trainer.default_root_dir>/spectral.csv``. SVDs run on ``device`` in ``dtype``; W0's are cached on
    the CPU. Only global rank 0 computes. A resumed fit has no pretrained weights to compare with, so the
    callback then does nothing. The cache holds about twice the adapted layers' size: at 7B scale, choose
    ``target_modules`` accordingly.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        k: int = DEFAULT_K,
        eps: Sequence[float] = DEFAULT_EPS,
        target_modules: Sequence[str] | None = None,
        path: str | Path | None = None,
        weights_fn: WeightsFn | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        layer_stride: int = 1,
        pretrained: dict[str, SVD] | None = None,
    ) -> None:
        if every_n_steps < 1 or layer_stride < 1:
            raise ValueError("every_n_steps and layer_stride must be >= 1")
        self.every_n_steps, self.k, self.eps = every_n_steps, k, tuple(eps)
        # layer_stride: only blocks whose number is a multiple of it (a systematic sample of the depth);
        # pretrained: SVDs of the pretrained weights (pretrained_svds), instead of the weights at fit start
        self.layer_stride, self.pretrained = layer_stride, pretrained
        self.target_modules = set(target_modules) if target_modules is not None else None
        self.path, self.weights_fn, self.dtype, self.device = path, weights_fn, dtype, device
        self._svd0: dict[str, SVD] = {}
        self._rows: list[dict] = []
        self._last_step: int | None = None
        self._resumed = False

    @contextmanager
    def _weights(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
        """(name, effective weight) pairs to read on global rank 0 inside the block. Every rank must enter:
        under FSDP the block gathers the whole parameters (onto rank 0)."""
        fn = self.weights_fn
        if fn is None:
            from sorsa_repro.methods import effective_weights as fn
        # a LightningModule that wraps the adapted model as .model: effective_weights wants that model
        inner = getattr(pl_module, "model", None)
        model = inner if isinstance(inner, torch.nn.Module) else pl_module
        with whole_model(model, fsdp_root(trainer)) as whole, torch.no_grad(), _rng_guard():
            yield ((name, w) for name, w in fn(whole) if self.selected(name))

    def selected(self, name: str) -> bool:
        layer, module = parse_layer_name(name)
        in_stride = layer is None or layer % self.layer_stride == 0
        return in_stride and (self.target_modules is None or module in self.target_modules)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._path = Path(self.path or Path(trainer.default_root_dir) / "spectral.csv")
        self._svd0, self._rows, self._last_step = {}, [], None
        self._resumed = trainer.ckpt_path is not None
        if self._resumed:
            warnings.warn(
                "SpectralCallback: resumed fit, pretrained weights unknown; not recording", stacklevel=2
            )
            return
        with self._weights(trainer, pl_module) as weights:
            if not trainer.is_global_zero:
                return
            for name, w in weights:
                if self.pretrained is not None and name in self.pretrained:
                    self._svd0[name] = self.pretrained[name]
                else:
                    self._svd0[name] = svd(w.detach().to(self.device), self.dtype).to("cpu")
        if not self._svd0:
            warnings.warn("SpectralCallback: no adapted layers found; not recording", stacklevel=2)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # called per micro-batch; record once when an optimizer step lands on a multiple of N
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._record(step, trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._record(trainer.global_step, trainer, pl_module)

    def _record(self, step: int, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = step
        if self._resumed:
            return
        with self._weights(trainer, pl_module) as weights:
            if not self._svd0:  # not rank 0, or no adapted layers
                return
            for name, w in weights:
                if name in self._svd0:
                    svd0 = self._svd0[name].to(self.device)
                    m = spectral_metrics(None, w.detach().to(self.device), k=self.k, eps=self.eps, svd0=svd0)
                    self._rows.append({"step": step, **layer_row(name, m)})
        atomic_write_text(self._path, rows_to_frame(self._rows, index=None).to_csv(index=False))
