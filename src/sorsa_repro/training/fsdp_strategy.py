"""FSDP through Lightning on CPU processes too (gloo: the tests' two-process runs); on GPUs Lightning's own."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import FSDPStrategy


class CpuCapableFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy, which also runs on CPU processes (gloo, for tests): there Lightning
    passes ``device_id=None``, which torch's FSDP rejects without an accelerator, and saves and loads
    full state dicts with ``offload_to_cpu=True``, which crashes when the shards already live on the
    CPU. On GPUs Lightning's own code runs unchanged."""

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def _setup_model(self, model):
        if not self._on_cpu():
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )

    def lightning_module_state_dict(self):
        if not (self._on_cpu() and self._state_dict_type == "full"):
            return super().lightning_module_state_dict()
        with _full_state_dict_on_cpu(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer):
        if not (self._on_cpu() and self._state_dict_type == "full"):
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's wrapped one
        with _full_state_dict_on_cpu(self.model):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # the standard (parameter id) format, as Lightning stores it
            state = FullyShardedDataParallel.rekey_optim_state_dict(
                state, OptimStateKeyType.PARAM_ID, self.model
            )
        return state

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        if not self._on_cpu() or Path(checkpoint_path).is_dir():
            return super().load_checkpoint(checkpoint_path, weights_only)
        from lightning.pytorch.trainer.states import TrainerFn
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        path = Path(self.broadcast(str(checkpoint_path)))
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        with _full_state_dict_on_cpu(self.model, rank0_only=False):  # every rank loads its shards
            self.model.load_state_dict(
                checkpoint.pop("state_dict"), strict=self.lightning_module.strict_loading
            )
            optimizer_states = checkpoint["optimizer_states"] if fitting else []
            for optimizer, state in zip(self.optimizers, optimizer_states, strict=fitting):
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_NAME, self.model
                )
                optimizer.load_state_dict(
                    FullyShardedDataParallel.optim_state_dict_to_load(self.model, optimizer, state)
                )
        return checkpoint


def _full_state_dict_on_cpu(model, rank0_only: bool = True):
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    return FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )
