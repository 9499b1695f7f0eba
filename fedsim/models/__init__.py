"""Models: the offline tiny base model, shape counting on the meta device, the local training step."""
