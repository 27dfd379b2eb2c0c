"""`genaug train ldm` (2D pretraining) and `genaug train seq` (the sequence model).

Both train on VAE latents (`mode() x scaling_factor`, encoded once with the trained VAE and
cached in the run folder) with the SD-1.4 DDPM schedule and the MSE epsilon loss.

- `ldm`: the 2D UNet (`sequence=False`) on single frames, with class, image prior and caption;
  the whole UNet is trainable. The prior is the clip's first-frame prior (the only one
  precomputed), dropped to zeros with probability `prior_drop`; captions become "" with
  probability `text_drop`.
- `seq`: the 2D model (`--init-dir`, else a fresh one) inflated with `SequenceUNet.from_2d`,
  trained on 8-frame clips with the reference's `keep_and_drop` condition dropout (see
  `conditioning.py`). Trainable: `finetune_parameters` (the reference's set), or everything with
  `--train-all`. Evaluated every `eval_every` steps by class fidelity (see `evaluation.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from services.models.classifier import VideoClassifier
from services.models.ldm import WEIGHTS_NAME, SequenceUNet, finetune_parameters, make_scheduler
from services.models.ldm.legacy import is_legacy_checkpoint, load_legacy_unet
from services.models.vae import load_vae

from . import evaluation
from .common import Trainer
from .conditioning import apply_drop, keep_and_drop, text_drop_flags
from .data import ClipSet, load_clips, load_conditions, to_unit, write_classes
from .settings import LatentSettings, LdmSettings, SeqSettings

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ cached inputs
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@torch.inference_mode()
def encode_latents(vae, clips: ClipSet, batch: int = 64) -> torch.Tensor:
    """Latents (N, 4, T, h, w) = mode(encode(frames)) x scaling_factor."""
    frames = to_unit(clips.frames)  # (N, T, H, W)
    n, t = frames.shape[:2]
    flat = frames.reshape(n * t, 1, *frames.shape[2:])
    parts = []
    for i in range(0, len(flat), batch):
        z = vae.encode(flat[i : i + batch].to(vae.device)).latent_dist.mode()
        parts.append(z.cpu() * vae.config.scaling_factor)
    z = torch.cat(parts)
    return z.reshape(n, t, *z.shape[1:]).transpose(1, 2).contiguous()


def cached_latents(vae_dir: Path, clips: ClipSet, cache: Path) -> torch.Tensor:
    """`encode_latents`, cached in `cache` (safetensors) and redone when the VAE changes."""
    digest = _file_digest(vae_dir / "diffusion_pytorch_model.safetensors")
    digest += _file_digest(vae_dir / "config.json")  # the scaling factor lives there
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as handle:
            if (handle.metadata() or {}).get("vae") == digest:
                return handle.get_tensor("latents")
    vae = load_vae(vae_dir).eval()
    latents = encode_latents(vae, clips)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents}, str(cache), metadata={"vae": digest})
    return latents


def text_embeddings(texts: list[str], cache: Path) -> dict[str, torch.Tensor]:
    """MiniLM token embeddings (L, 384) of each distinct caption and of "" (cached)."""
    unique = sorted(set(texts) | {""})
    keys = {f"t{i}": t for i, t in enumerate(unique)}
    if cache.is_file():
        stored = load_file(str(cache))
        meta = json.loads((cache.with_suffix(".json")).read_text())
        if sorted(meta.values()) == unique:
            return {meta[k]: v for k, v in stored.items()}
    from services.models.text import load_text_encoder

    encoder = load_text_encoder("minilm", device="cpu")
    emb = torch.from_numpy(np.asarray(encoder.encode(unique), dtype=np.float32))
    save_file({k: emb[i].contiguous() for i, k in enumerate(keys)}, str(cache))
    cache.with_suffix(".json").write_text(json.dumps(keys) + "\n")
    return {t: emb[i] for i, t in enumerate(unique)}


# ---------------------------------------------------------------------------------- training
class _Data:
    """Everything a stage samples from: latents, labels, captions, conditions."""

    def __init__(self, settings: LatentSettings, split: str, classes: list[str] | None = None):
        out = Path(settings.out)
        self.clips = load_clips(settings.dataset_root, settings.name, split, classes)
        self.classes = self.clips.classes
        self.latents = cached_latents(
            settings.vae_dir, self.clips, out / f"latents_{split}.safetensors"
        )
        self.cond = load_conditions(settings.dataset_root, settings.name, self.clips)
        self.labels = torch.from_numpy(self.clips.labels)
        self.text = text_embeddings(self.clips.texts, out / "text_embeddings.safetensors")
        self.text_rows = torch.stack([self.text[t] for t in self.clips.texts])
        self.empty_text = self.text[""]


def _noise(scheduler, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
    return scheduler.add_noise(x0, noise, t), noise, t


def _build_model(args, classes: list[str], stage: str, latent_channels: int) -> SequenceUNet:
    def fresh(sequence: bool) -> SequenceUNet:
        return SequenceUNet.from_preset(
            args.preset,
            num_classes=len(classes),
            sequence=sequence,
            in_channels=latent_channels,
            out_channels=latent_channels,
        )

    if stage == "ldm":
        return fresh(sequence=False)
    model_2d = _load_init(args.init_dir)
    if model_2d is not None:
        logger.info("seq: inflating the 2D model from %s", args.init_dir)
        model = SequenceUNet.from_2d(model_2d)
        if model.config.in_channels != latent_channels:
            raise ValueError(
                f"--init-dir {args.init_dir} has {model.config.in_channels} latent channels, "
                f"the VAE in --vae-dir has {latent_channels}"
            )
        return model
    logger.warning("seq: no 2D model at %s, starting from a fresh initialisation", args.init_dir)
    return fresh(sequence=True)


def _load_init(init_dir: Path | None) -> SequenceUNet | None:
    """The 2D model of `--init-dir` (a pre-diffusers checkpoint is converted in memory), or None
    when the folder holds none."""
    if init_dir is None:
        return None
    if is_legacy_checkpoint(init_dir):
        logger.warning(
            "--init-dir %s is in the pre-diffusers format: converted in memory (convert it once "
            "with `python -m services.models.ldm.legacy`)",
            init_dir,
        )
        return load_legacy_unet(init_dir)
    if (Path(init_dir) / WEIGHTS_NAME).is_file():
        return SequenceUNet.from_pretrained(init_dir)
    return None


def train(settings: LdmSettings | SeqSettings) -> dict:
    stage = settings.stage
    out = Path(settings.out)
    data = _Data(settings, "train")
    torch.manual_seed(settings.seed)
    model = _build_model(settings, data.classes, stage, latent_channels=data.latents.shape[1])
    if stage == "seq" and not settings.train_all:
        names = {n for n, _ in finetune_parameters(model)}
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
    params = [p for p in model.parameters() if p.requires_grad]
    logger.info(
        "%s: %d parameters, %d trainable; %d train clips",
        stage,
        model.num_parameters(),
        sum(p.numel() for p in params),
        len(data.labels),
    )
    scheduler = make_scheduler("ddpm")
    n_clips, _, n_frames = data.latents.shape[:3]
    b = settings.batch_size

    def loss_ldm(step: int) -> torch.Tensor:
        clip = torch.randint(0, n_clips, (b,))
        frame = torch.randint(0, n_frames, (b,))
        x0 = data.latents[clip, :, frame]
        drop_prior = torch.rand(b) < settings.prior_drop
        drop_text = torch.rand(b) < settings.text_drop
        prior = apply_drop(data.cond.priors[clip], drop_prior)
        text = torch.where(drop_text[:, None, None], data.empty_text, data.text_rows[clip])
        xt, noise, t = _noise(scheduler, x0)
        pred = model(
            xt.to(trainer.device),
            t.to(trainer.device),
            class_labels=data.labels[clip],
            encoder_hidden_states=text.to(trainer.device),
            image_prior=prior.to(trainer.device),
        )
        return F.mse_loss(pred.float(), noise.to(pred.device))

    def loss_seq(step: int) -> torch.Tensor:
        clip = torch.randint(0, n_clips, (b,))
        x0 = data.latents[clip]
        drop_prior, drop_motion = keep_and_drop(b)
        drop_text = text_drop_flags(drop_prior, drop_motion, settings.text_drop)
        prior = apply_drop(data.cond.priors[clip], drop_prior)
        motion = apply_drop(data.cond.motion[clip], drop_motion)
        text = torch.where(drop_text[:, None, None], data.empty_text, data.text_rows[clip])
        xt, noise, t = _noise(scheduler, x0)
        dev = trainer.device
        pred = model(
            xt.to(dev),
            t.to(dev),
            class_labels=data.labels[clip].to(dev),
            encoder_hidden_states=text.to(dev),
            image_prior=prior.to(dev),
            motion_field=motion.to(dev),
            trajectories=data.cond.trajectories[clip].to(dev),
            trajectory_mask=data.cond.trajectory_mask[clip].to(dev),
        )
        return F.mse_loss(pred.float(), noise.to(pred.device))

    evaluate = _fidelity_eval(settings, model, data) if stage == "seq" else None
    trainer = Trainer(model, params, settings, out, stage, evaluate)
    model.to(trainer.device)
    summary = trainer.fit(loss_ldm if stage == "ldm" else loss_seq)
    summary.update(
        parameters=model.num_parameters(),
        trainable_parameters=sum(p.numel() for p in params),
        train_all=bool(stage == "ldm" or settings.train_all),
        batch_size=b,
        classes=data.classes,
    )
    final = out / "final"
    export = model.cpu().eval()
    if settings.save_dtype == "float16":
        export = export.half()
    export.save_pretrained(final)
    model.float()
    write_classes(final, data.classes)
    (final / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _fidelity_eval(settings: SeqSettings, model: SequenceUNet, train_data: _Data):
    """`evaluate(step)` for the Trainer: class fidelity on test references, when a trained
    classifier is available."""
    folder = settings.classifier_dir
    if folder is None or not (Path(folder) / "config.json").is_file():
        logger.warning("no classifier at %s: seq evaluation skipped", settings.classifier_dir)
        return None
    classifier = VideoClassifier.from_pretrained(folder)
    vae = load_vae(settings.vae_dir).eval()
    test = _Data(settings, "test", train_data.classes)
    picked = evaluation.pick_per_class(test.clips.labels, settings.eval_clips, seed=0)
    refs = evaluation.references(test.clips, test.cond, picked, test.text)
    labels = test.clips.labels[picked]

    def evaluate(step: int) -> dict:
        clips, seconds = evaluation.generate(
            model, vae, refs, test.empty_text, settings.eval_guidance, settings.eval_steps, seed=1
        )
        model.train()
        pred = evaluation.classify(classifier, clips)
        return {**evaluation.fidelity(pred, labels, test.classes), "s_per_clip": round(seconds, 2)}

    return evaluate
