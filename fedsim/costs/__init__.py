"""Cost models: pure functions of model shape, training config and device/network facts (no Ray, no torch)."""
