"""Data: the offline synthetic instruction corpus, client partitions, tokenization (once, cached)."""
