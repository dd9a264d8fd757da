"""Training: data loaders, optimizer and schedule, the trainer loop, checkpoints, evaluation during training."""
