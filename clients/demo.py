"""`genaug demo` (what `make demo` runs): the embedded main job on bundled models and data.

Today: start the VAE codec as a local process, round-trip a real echocardiography clip (the
pydicom test cine) through it over gRPC, report the reconstruction and write a contact sheet.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clients.channel import open_channel
from clients.codec import VaeCodecClient
from clients.local_cluster import LocalCluster

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="model repository (default: the bundled one)"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames of the clip (default 8)")
    parser.add_argument("--size", type=int, default=64, help="frame size in px (default 64)")


def echo_clip(frames: int, size: int) -> np.ndarray:
    """Grey uint8 (T,size,size) frames of pydicom's real cardiac ultrasound cine."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    rgb = dataset.pixel_array[:frames]  # pydicom converts YBR_FULL_422 to RGB once, here
    grey = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = []
    for frame in grey:
        h, w = frame.shape
        side = max(h, w)
        square = np.zeros((side, side), np.float32)
        square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = frame
        out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR)))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def contact_sheet(rows: list[np.ndarray], path: Path) -> None:
    sheet = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
        path
    )


def run(args: argparse.Namespace) -> int:
    clip = echo_clip(args.frames, args.size)
    with LocalCluster(["vae_codec"], args.model_dir, args.out / "logs") as cluster:
        target = cluster.services["vae_codec"].target

        with open_channel(target) as channel:
            codec = VaeCodecClient(channel)
            info = codec.info(timeout=10)
            frames = (clip.astype(np.float32) / 127.5 - 1.0)[:, None]
            began = time.perf_counter()
            latents = codec.encode(frames, timeout=60)
            decoded = codec.decode(latents, timeout=60)
            seconds = time.perf_counter() - began
    recon = np.clip((decoded[:, 0] + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    sheet = args.out / "vae_round_trip.png"
    contact_sheet([clip, recon], sheet)
    print(f"VAE codec round trip over gRPC ({target}):")
    print(f"  clip     {tuple(frames.shape)} float32 from the pydicom echo cine")
    print(f"  latents  {tuple(latents.shape)} float32 (scaling factor {info.scaling_factor:g})")
    print(f"  decoded  {tuple(decoded.shape)} float32 in {seconds:.2f}s")
    print(f"  weights  {info.weights} ({info.config_name}); PSNR {psnr(clip, recon):.1f} dB")
    print(f"  contact sheet (top: real, bottom: reconstruction): {sheet}")
    return 0
