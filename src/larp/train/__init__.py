"""Training: the engine, tasks, recipes and codebook tools."""
