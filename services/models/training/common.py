"""The training loop shared by every `genaug train` stage.

`Trainer` owns what the stages have in common: seeding, device and bf16 autocast on CUDA,
AdamW with a linear warm-up and cosine decay, gradient clipping, a tqdm progress bar, the loss
log (`loss.csv`, plotted to `loss.png`), a wall-clock limit (`max_minutes`; SIGTERM or Ctrl-C
also stop cleanly after the current step) and resumable checkpoints.

A checkpoint is a folder `checkpoint/` with `model.safetensors` (the trained module's state
dict), `optimizer.pt` (the optimizer and scheduler state: tensors, numbers and lists only, read
back with `torch.load(weights_only=True)`) and `state.json` (step, wall time); it is written to
a temporary folder and renamed, so a killed run leaves the previous one intact.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from services.models.runtime import resolve_device
from services.models.weights import load_strict

from .settings import TrainSettings

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine decay to 0.05."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class LossLog:
    """Appends `step,loss,lr,seconds[,extra...]` rows to a CSV and plots the loss to a PNG."""

    def __init__(self, directory: Path, columns: Iterable[str] = ()):
        self.path = directory / LOSS_CSV
        self.columns = ["step", "loss", "lr", "seconds", *columns]
        if not self.path.exists():
            self.path.write_text(",".join(self.columns) + "\n")

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(c, "") for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` (after resuming from an older checkpoint)."""
        rows = self.read()
        with self.path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for r in rows:
                if int(r["step"]) <= step:
                    writer.writerow([r.get(c, "") for c in self.columns])

    def read(self) -> list[dict]:
        with self.path.open() as handle:
            return list(csv.DictReader(handle))

    def plot(self, title: str) -> Path | None:
        rows = [r for r in self.read() if r["loss"]]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
        if len(loss) >= 10:
            k = max(5, len(loss) // 30)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        out = self.path.parent / LOSS_PNG
        fig.savefig(out)
        plt.close(fig)
        return out


def save_checkpoint(
    directory: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict,
) -> None:
    """Writes `directory/checkpoint/` atomically (temporary folder, then rename)."""
    final = directory / CHECKPOINT_DIR
    tmp = directory / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "optimizer.pt",
    )
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    old = directory / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    directory: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict | None:
    """Restores a checkpoint written by `save_checkpoint`; returns its state or None."""
    ckpt = directory / CHECKPOINT_DIR
    if not (ckpt / "state.json").is_file():
        return None
    load_strict(module, load_file(str(ckpt / "model.safetensors")), str(ckpt))
    if optimizer is not None:
        extra = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(extra["scheduler"])
    return json.loads((ckpt / "state.json").read_text())


class Trainer:
    """Runs `loss_fn(step) -> loss tensor` for `settings.steps` optimiser steps.

    Args:
        module: The module whose state is checkpointed (all its parameters, trainable or not).
        parameters: The trainable parameters (AdamW over these only).
        settings: Optimisation settings.
        out_dir: Run folder (checkpoint, loss.csv, loss.png).
        title: Plot title and progress-bar label.
        evaluate: Optional `evaluate(step) -> dict` run every `eval_every` steps and at the end;
            its numbers are logged and written to `eval.jsonl`.
    """

    def __init__(
        self,
        module: nn.Module,
        parameters: list[nn.Parameter],
        settings: TrainSettings,
        out_dir: Path,
        title: str,
        evaluate: Callable[[int], dict] | None = None,
    ):
        self.module = module
        self.parameters = parameters
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.evaluate = evaluate
        self.device = resolve_device(settings.device)
        self.optimizer = torch.optim.AdamW(
            parameters, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(settings.warmup_steps, settings.steps)
        )
        self.log = LossLog(self.out_dir)
        self.step = 0
        self.elapsed = 0.0

    def autocast(self):
        """bf16 autocast on CUDA (fp32 master weights), nothing on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _resume(self) -> None:
        state = load_checkpoint(self.out_dir, self.module, self.optimizer, self.scheduler)
        if state is None:
            return
        self.step = int(state["step"])
        self.elapsed = float(state.get("seconds", 0.0))
        self.log.truncate_after(self.step)
        logger.info("%s: resumed from step %d", self.title, self.step)

    def checkpoint(self) -> None:
        save_checkpoint(
            self.out_dir,
            self.module,
            self.optimizer,
            self.scheduler,
            {"step": self.step, "seconds": round(self.elapsed, 1), "title": self.title},
        )

    def _run_eval(self) -> None:
        if self.evaluate is None:
            return
        self.module.eval()
        with torch.no_grad():
            result = {
                "step": self.step,
                "seconds": round(self.elapsed, 1),
                **self.evaluate(self.step),
            }
        self.module.train()
        logger.info("%s eval: %s", self.title, result)
        with (self.out_dir / "eval.jsonl").open("a") as handle:
            handle.write(json.dumps(result) + "\n")

    def fit(self, loss_fn: Callable[[int], torch.Tensor]) -> dict:
        """Trains until `steps` or `max_minutes`; checkpoints at the end. Returns a summary."""
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        if s.resume:
            self._resume()
        # Seed per start step, so a resumed run draws fresh (but reproducible) batches.
        seed_everything(s.seed + self.step)
        self.module.train()
        deadline = None if not s.max_minutes else time.monotonic() + 60.0 * s.max_minutes
        bar = tqdm(
            total=s.steps, initial=self.step, desc=self.title, disable=not s.progress, unit="step"
        )
        stopped_early = False
        stop_requested = _StopFlag()
        start = time.monotonic() - self.elapsed
        running = []
        while self.step < s.steps:
            if stop_requested or (deadline is not None and time.monotonic() >= deadline):
                stopped_early = True
                break
            with self.autocast():
                loss = loss_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.parameters, s.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.elapsed = time.monotonic() - start
            running.append(float(loss.detach()))
            if self.step % s.log_every == 0 or self.step == s.steps:
                mean = sum(running) / len(running)
                running.clear()
                lr = self.scheduler.get_last_lr()[0]
                self.log.append(
                    {"step": self.step, "loss": f"{mean:.6g}", "lr": f"{lr:.3g}",
                     "seconds": f"{self.elapsed:.1f}"}
                )  # fmt: skip
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            bar.update()
            if s.checkpoint_every and self.step % s.checkpoint_every == 0:
                self.checkpoint()
            if s.eval_every and self.step % s.eval_every == 0:
                self._run_eval()
        bar.close()
        stop_requested.restore()
        self.checkpoint()
        if not (s.eval_every and self.step % s.eval_every == 0):
            self._run_eval()
        self.log.plot(self.title)
        summary = {
            "stage": self.title,
            "steps": self.step,
            "seconds": round(self.elapsed, 1),
            "stopped_early": stopped_early,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


class _StopFlag:
    """True once SIGTERM or SIGINT arrived: the loop then stops after the current step and
    checkpoints, as when `max_minutes` is reached (only installed in the main thread)."""

    def __init__(self):
        self._set = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        logger.warning("signal %d: stopping after this step and checkpointing", signum)
        self._set = True

    def __bool__(self) -> bool:
        return self._set

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
