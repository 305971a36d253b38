"""frx for Lightning: a callback that logs attribute leakage of the embeddings while a model trains."""

from frx_lightning.callback import AttributeRecoveryCallback
from frx_lightning.collectives import LightningCollectives

__all__ = ["AttributeRecoveryCallback", "LightningCollectives"]
