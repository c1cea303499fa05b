"""Datasets (built-in and user factories), their fixed splits and fingerprints, and augmentation."""
