"""The torch internals of the estimators: the network, its training loop, adversaries,
independence penalties and inference helpers. Used by :mod:`bafo_pipeline.transformers`, and
by the Ray export's actors through :mod:`bafo_pipeline._nn.bundle` (an encoder without its estimator)."""
