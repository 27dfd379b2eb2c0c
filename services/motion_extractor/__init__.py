"""Motion-trajectory extractor service: the motion field and the MFA trajectories of a clip.

The gRPC servicer and the KServe v2 model call `services.models.motion` (`field` computes the
(T-1, 2, H, W) motion field, `trajectories` the `traj` / `mask` index tensors of the generator's
SAM); clips are decoded and encoded by `services.data.video`, the decoder ingest uses too.
"""
