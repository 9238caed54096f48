"""Policies: files -> resources -> compiled, immutable snapshots."""
