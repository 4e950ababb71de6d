"""The training engine: one loop for every task, the state on the mesh, checkpoints, config."""
