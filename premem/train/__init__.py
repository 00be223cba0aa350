"""Training: tiny models built offline (`premem.train.tiny`) for tests and small benchmarks."""
