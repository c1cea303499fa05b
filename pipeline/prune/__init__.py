"""Structural pruning: channel-importance criteria (the prune stage drives torch-pruning)."""
