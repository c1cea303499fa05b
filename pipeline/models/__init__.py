"""Built-in models, user factories and checkpoints, and loading/saving a stage's PyTorch model."""
