"""Training of the generator (VAE, 2D LDM, sequence LDM) and the filter's classifier.

Entry point: `genaug train {vae,ldm,seq,classifier}` (`cli.py`). The loop, checkpoints and loss
log live in `common.py`, data loading in `data.py`, condition dropout in `conditioning.py`, the
class-fidelity evaluation (shared with `benchmarks.generator_quality`) in `evaluation.py`, and
one module per stage (`vae.py`, `classifier.py`, `ldm.py` for both `ldm` and `seq`).
"""
