"""Sweeps: many federations (a grid or a search over scenario keys and seeds) as Ray Tune trials."""
