"""Attribute leakage of face embeddings: held-out linear probes on identity-disjoint folds."""
