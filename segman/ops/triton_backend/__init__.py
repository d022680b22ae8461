"""Triton GPU backends of ``segman.ops`` (imported lazily, only when a Triton backend is used)."""
