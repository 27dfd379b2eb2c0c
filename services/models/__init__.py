"""The neural networks shared by the services and the training CLIs.

Imports no service package and no gRPC code: the VAE is used by the codec, the filter's
VAE-Seq and a co-located sampler; the classifier by the filter and the benchmarks.
"""
