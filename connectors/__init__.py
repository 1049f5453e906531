"""The receive connector model: what a connector is and what it permits. Pure Python, no I/O."""
