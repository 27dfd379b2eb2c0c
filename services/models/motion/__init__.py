"""Motion conditions of a clip: codec motion vectors (optical flow as the explicit fallback)
into a dense field, and the trajectories Motion Field Attention uses. No gRPC here."""
