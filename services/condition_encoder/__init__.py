"""Condition encoder service: MedSAM-family image priors of reference frames, text embeddings.

`encoder` holds the two networks and does the validated, batched, deadline-checked compute;
`model` exposes it over the open inference protocol, `servicer` over the typed genaug.v1 API.
"""
