"""Training: the LightningModule and the run task that writes a run folder."""

# config resolvers conf/ uses: ${run_id:} (train.yaml), ${ortho_coef:...} (method/sorsa.yaml),
# ${slurm_tasks:...} / ${slurm_gpus:...} (hydra/launcher/slurm.yaml)
from sorsa_repro.training import identity, launcher, ortho  # noqa: F401
