"""Readers of other tools' 2D keypoint files, mapped to MHR-70 (pure functions; the CLI is tools/importers.py)."""
