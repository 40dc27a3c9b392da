"""The torch internals of the estimators: the network, its training loop, adversaries,
independence penalties and inference helpers. Used by :mod:`bafo_pipeline.transformers` only."""
