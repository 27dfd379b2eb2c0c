"""Motion-trajectory extractor: the motion field and the Motion Field Attention trajectories.

Pure computation (numpy, OpenCV, PyAV, motion-vector-extractor); the gRPC servicer calls it.
`video_io` decodes and encodes clips, `motion` computes the (T-1, 2, H, W) motion field and
`trajectories` turns it into the `traj` / `mask` index tensors of the generator's SAM.
"""
