"""Training and loading Yuyan tokenizers (byte-level BPE)."""
