"""One transformation per module; each pass reports honestly whether it changed the model."""
