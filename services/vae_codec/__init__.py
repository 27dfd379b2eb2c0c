"""VAE codec service: frames (T,1,H,W) <-> scaled latents (T,C,H/8,W/8)."""
