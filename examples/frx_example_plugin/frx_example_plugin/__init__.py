"""An example frx plugin: a probe set made in code (``stripes``) and an estimator for it."""
