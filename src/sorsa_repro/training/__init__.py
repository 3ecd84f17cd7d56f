"""Training: the LightningModule and the run task that writes a run folder."""
