"""`genaug train vae`: the grayscale AutoencoderKL on dataset frames.

Loss: L1 + `grad_weight` x L1 of the image gradients (edges: the speckle and the myocardial
border) + 1e-6 x KL, decoding a posterior sample as the reference does. The reference adds
LPIPS (VGG16 features); its weights are not available offline here, so the gradient term stands
in for the perceptual term. Quality is measured as PSNR of `decode(mode(encode(x)))` on
held-out frames (the codec service encodes with the posterior mode). After training,
`scaling_factor` is set to 1 / std of the training latents (SD's recipe for its 0.18215).
`--init-dir DIR --decoder-only` continues a trained VAE training only its decoder on posterior
modes: the encoder, the latents and an LDM trained on them stay valid while PSNR improves.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.models.vae import build_vae, load_vae, save_vae

from .common import Trainer
from .data import load_frames, to_unit
from .settings import VaeSettings

logger = logging.getLogger(__name__)


def psnr_db(vae, frames: np.ndarray, batch: int = 64) -> float:
    """PSNR (dB, peak 2 on [-1, 1], i.e. 255 on uint8) of mode reconstructions of uint8 frames."""
    mse_sum, count = 0.0, 0
    vae.eval()
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            x = to_unit(frames[i : i + batch]).unsqueeze(1).to(vae.device)
            z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z).sample.clamp(-1, 1)
            mse_sum += float(((y - x) ** 2).sum())
            count += x.numel()
    mse = mse_sum / max(1, count)
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


@torch.inference_mode()
def calibrate_scaling(vae, frames: np.ndarray, batch: int = 128) -> float:
    """Sets `scaling_factor` to 1 / std of the latents (posterior modes) of `frames`, so the
    diffusion model sees unit-variance latents, as SD-1.4's 0.18215 does for its VAE."""
    vae.eval()
    z = torch.cat(
        [
            vae.encode(
                to_unit(frames[i : i + batch]).unsqueeze(1).to(vae.device)
            ).latent_dist.mode()
            for i in range(0, len(frames), batch)
        ]
    )
    scaling = round(1.0 / float(z.float().std()), 5)
    vae.register_to_config(scaling_factor=scaling)
    return scaling


def _gradient_l1(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dy = (y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    dx = (y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def train(settings: VaeSettings) -> dict:
    out = Path(settings.out)
    frames = load_frames(settings.dataset_root, settings.name, "train", settings.frame_source)
    held_out = load_frames(settings.dataset_root, settings.name, "test", settings.frame_source)
    rng = np.random.default_rng(settings.seed)
    eval_frames = held_out[rng.permutation(len(held_out))[: settings.eval_frames]]
    logger.info("VAE: %d train frames, %d held-out frames", len(frames), len(eval_frames))

    decoder_only = bool(settings.decoder_only)
    if settings.init_dir is not None:
        vae = load_vae(settings.init_dir)
        logger.info("VAE: starting from %s", settings.init_dir)
    elif decoder_only:
        raise ValueError("--decoder-only needs --init-dir (a trained VAE)")
    else:
        vae = build_vae(settings.vae_config, seed=settings.seed)
    if decoder_only:  # the latents (and any LDM trained on them) stay valid
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    data = to_unit(frames).unsqueeze(1)

    # L1 (the reference's) pulls speckle towards its median; MSE towards its mean, which is
    # what PSNR rewards.
    recon = F.mse_loss if settings.recon_loss == "mse" else F.l1_loss

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(data), (settings.batch_size,))
        x = data[idx]
        flip = torch.rand(len(x)) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(trainer.device)
        if decoder_only:  # decode the posterior mode, as the codec and the sampler do
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z).sample
            return recon(y, x) + settings.grad_weight * _gradient_l1(y, x)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        return recon(y, x) + settings.grad_weight * _gradient_l1(y, x) + settings.kl_weight * kl

    def evaluate(step: int) -> dict:
        return {"psnr_db": round(psnr_db(vae, eval_frames), 3)}

    title = "vae-decoder" if decoder_only else "vae"
    trainer = Trainer(vae, params, settings, out, title, evaluate)
    vae.to(trainer.device)
    summary = trainer.fit(loss_fn)
    psnr = psnr_db(vae, held_out)
    # Decoder-only runs keep the encoder, hence the latents and their scaling factor.
    scaling = vae.config.scaling_factor if decoder_only else calibrate_scaling(vae, frames)
    summary.update(
        decoder_only=decoder_only,
        init_dir=None if settings.init_dir is None else str(settings.init_dir),
        scaling_factor=scaling,
        psnr_db_test=round(psnr, 3),
        train_frames=len(frames),
        test_frames=len(held_out),
        frame_source=settings.frame_source,
    )
    provenance = {
        "provenance": "trained",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": settings.name,
        "config": settings.vae_config,
        "loss": f"{settings.recon_loss.upper()} + {settings.grad_weight} x gradient-L1"
        + ("" if decoder_only else f" + {settings.kl_weight} x KL")
        + " (no LPIPS)",
        **summary,
    }
    save_vae(vae.cpu().eval(), out / "final", provenance)
    return summary


def load_trained(directory: Path):
    return load_vae(directory)
