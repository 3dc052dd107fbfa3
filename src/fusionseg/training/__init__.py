"""The training loop (Lightning Fabric) and its callbacks."""
