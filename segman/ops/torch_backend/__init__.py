"""Pure-PyTorch reference backends: exact, vectorised, CPU and GPU."""
