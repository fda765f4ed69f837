"""One LightningDataModule per task, plus the shared reading and batching pieces."""
