"""The SLURM launcher's resources, derived from the trainer: one SLURM task per device, the trainer's nodes.

conf/hydra/launcher/slurm.yaml asks for ``gpus_per_node`` and ``tasks_per_node`` = ``trainer.devices`` and
``nodes`` = ``trainer.num_nodes`` (Lightning expects one SLURM task per device). A launcher setting given by
hand that disagrees with a job's trainer (``hydra.launcher.gpus_per_node=4`` with ``trainer.devices=8``, or a
sweep over ``trainer.devices``, which one launcher config cannot follow) is refused before anything is
submitted (``check_launcher``, from the sweep's pre-flight check).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def device_count(devices) -> int | None:
    """Processes per node of ``trainer.devices`` (an int, a list of device ids or a digit string); None for
    "auto" / -1, which only the machine knows."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        return int(devices) if devices.strip().isdigit() else None
    try:
        return len(devices)
    except TypeError:
        return None


def launcher_resources(trainer: DictConfig) -> dict[str, int | None]:
    """What a job with this trainer section needs from SLURM."""
    count = device_count(trainer.get("devices"))
    gpu = str(trainer.get("accelerator", "gpu")) in ("gpu", "cuda", "auto")
    return {
        "nodes": int(trainer.get("num_nodes") or 1),
        "tasks_per_node": count or 1,
        "gpus_per_node": (count if gpu else 0) if count is not None else None,
    }


def check_launcher(config: DictConfig, job: DictConfig) -> None:
    """Refuse a submitit launcher whose nodes / tasks / GPUs per node disagree with the job's trainer."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    if launcher is None or "submitit" not in str(launcher.get("_target_", "")).lower():
        return
    wanted = launcher_resources(job.trainer)
    wrong = [
        f"hydra.launcher.{key}={launcher.get(key)} (the trainer needs {value})"
        for key, value in wanted.items()
        if key in launcher and value is not None and launcher.get(key) != value
    ]
    if wrong:
        raise ValueError(
            f"the SLURM launcher disagrees with trainer.devices={job.trainer.get('devices')} x "
            f"trainer.num_nodes={job.trainer.get('num_nodes', 1)}: {', '.join(wrong)}; leave them unset "
            "(conf/hydra/launcher/slurm.yaml derives them from the trainer) or make them agree"
        )


def _tasks(accelerator, devices) -> int:
    return launcher_resources(OmegaConf.create({"accelerator": accelerator, "devices": devices}))[
        "tasks_per_node"
    ]


def _gpus(accelerator, devices) -> int | None:
    return launcher_resources(OmegaConf.create({"accelerator": accelerator, "devices": devices}))[
        "gpus_per_node"
    ]


OmegaConf.register_new_resolver("slurm_tasks", _tasks, replace=True)
OmegaConf.register_new_resolver("slurm_gpus", _gpus, replace=True)
