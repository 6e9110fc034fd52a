"""Sample-quality evaluation: metrics on feature vectors and the FID Inception-v3 feature extractor.

:mod:`ncsn_jax.evaluation.metrics` (numpy / scipy) needs nothing but the features;
:mod:`ncsn_jax.evaluation.inception` computes the FID Inception network's pool3 features and logits in JAX.
"""
