"""NATTEN backends of ``segman.ops`` (NATTEN >= 0.20; imported lazily, only when NATTEN can run)."""
