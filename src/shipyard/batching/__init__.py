"""Adaptive batching: pure policies and merging, and the queue that applies them."""
