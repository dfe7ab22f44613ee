"""Results: the result file, statistics, and everything made from a saved suite (tables, exports,
figures, comparisons)."""
