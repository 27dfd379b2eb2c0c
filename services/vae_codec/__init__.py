"""VAE codec service: frames (T,1,H,W) <-> scaled latents (T,4,H/8,W/8)."""
