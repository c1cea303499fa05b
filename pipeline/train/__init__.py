"""The training loop shared by train and finetune: optimizers and schedules, losses and
distillation, per-parameter importance for learning rates."""
