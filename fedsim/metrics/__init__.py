"""Metrics: the cost ledger (JSONL, Parquet, TensorBoard), console output."""
