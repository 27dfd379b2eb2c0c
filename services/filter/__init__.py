"""Noisy synthetic-data filter service: semantic and sequential levels over a pool of clips.

`pool` holds the pool-level decisions on numbers only (unit-testable without networks),
`scorer` computes per-clip scores with the classifier and the VAE, `model` exposes the scorers
over the open inference protocol and `servicer` the typed client-streaming FilterPool RPC.
"""
