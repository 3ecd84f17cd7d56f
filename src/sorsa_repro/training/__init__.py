"""Training: the LightningModule and the run task that writes a run folder."""

from sorsa_repro.training import identity  # noqa: F401  (registers ${run_id:}, used by conf/train.yaml)
