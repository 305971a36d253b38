"""frx for Lightning: a callback that logs attribute leakage of the embeddings while a model trains."""

from frx_lightning.callback import AttributeRecoveryCallback, gather_embeddings, shard_indices

__all__ = ["AttributeRecoveryCallback", "gather_embeddings", "shard_indices"]
