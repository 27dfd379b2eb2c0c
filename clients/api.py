"""A Python API for platforms that do not want a CLI: list the generators, generate clips from
a reference clip, run the batch augmentation job.

    from clients import GenAug

    with GenAug("127.0.0.1:50053", encoder="127.0.0.1:50051", motion="127.0.0.1:50055") as genaug:
        print([g.name for g in genaug.generators()])
        frames = genaug.generate(clip, "HCM", n=4, seed=1)  # uint8 (4,T,H,W)

Everything goes over gRPC through `clients.rpc`; the batch job is `clients.augment`'s own (the
same preflight checks, plan, resumable state and output as `genaug augment`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.conditions import GrpcConditions
from clients.rpc.encoder import ConditionEncoderClient
from clients.rpc.errors import GenAugError
from clients.rpc.motion import MotionExtractorClient
from clients.rpc.sampler import SamplerClient, conditions_message
from genaug.errors import InvalidArgument, NotFound
from genaug.v1 import sampler_pb2 as pb

__all__ = ["GenAug", "Generator"]

# AugmentOptions fields the client sets from its own connections (not `augment(**options)`).
CONNECTION_OPTIONS = frozenset(
    {"sampler", "encoder", "motion", "filter", "tls_ca", "tls_cert", "tls_key"}
    | {"tls_server_name", "auth_token_file"}
)


@dataclass(frozen=True)
class Generator:
    """A generator a sampler serves, from its card (`ListModels`).

    Attributes:
        class_names: in class id order; `GenAug.generate` takes these names.
        num_frames, height, width: the clips it was trained on (0: unknown).
        is_default: requests that name no model get this one.
        card: the whole card (recipe, measured figures), as a dict.
    """

    name: str
    version: str
    class_names: tuple[str, ...]
    modality: str
    num_frames: int
    height: int
    width: int
    is_default: bool
    dataset_name: str = ""
    card: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_info(cls, info: pb.GeneratorInfo) -> Generator:
        return cls(
            info.name,
            info.version,
            tuple(info.class_names),
            info.modality,
            info.num_frames,
            info.height,
            info.width,
            info.is_default,
            info.dataset_name,
            _card(info.card_json),
        )


class GenAug:
    """A client of the Ctrl-GenAug services; a context manager that closes its channels.

    Args:
        sampler: the sampler's address ("host:port", or "dns:///name:port" to balance replicas).
        encoder, motion: the condition encoder's and motion extractor's addresses. With them
            the reference clip's conditions are computed once per `generate` call (and once per
            clip by `augment`); without them the sampler fetches them from the services it is
            wired to.
        filter: the filter's address, used by `augment` only; without it the job keeps every
            generated clip.
        settings: TLS, bearer token, deadlines (`ChannelSettings`; default: no TLS, the token
            from `$GENAUG_AUTH_TOKEN` as `genaug augment` reads it).
    """

    def __init__(
        self,
        sampler: str,
        *,
        encoder: str | None = None,
        motion: str | None = None,
        filter: str | None = None,
        settings: ChannelSettings | None = None,
    ):
        self.targets = {"sampler": sampler, "encoder": encoder, "motion": motion, "filter": filter}
        self.settings = settings or ChannelSettings(token=os.environ.get("GENAUG_AUTH_TOKEN"))
        self._channels = {
            role: open_channel(target, self.settings)
            for role, target in self.targets.items()
            if target and role != "filter"  # the batch job opens its own filter channel
        }
        self.sampler = SamplerClient(self._channels["sampler"])
        self._encoder = ConditionEncoderClient(self._channels["encoder"]) if encoder else None
        self._motion = MotionExtractorClient(self._channels["motion"]) if motion else None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> GenAug:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------- generators

    def generators(self, timeout: float | None = 10.0) -> list[Generator]:
        """The generators the sampler serves (`ListModels`)."""
        return [Generator.from_info(info) for info in self.sampler.list_models(timeout=timeout)]

    def generator(self, model: str = "", timeout: float | None = 10.0) -> Generator:
        """The generator `model` names, else the sampler's default.

        Raises:
            NotFound: no such generator (or no default), naming the sampler's generators.
        """
        served = self.generators(timeout)
        names = ", ".join(g.name for g in served) or "none"
        if model:
            match = [g for g in served if g.name == model]
        else:
            match = [g for g in served if g.is_default] or (served if len(served) == 1 else [])
        if len(match) != 1:
            what = f"no generator {model!r}" if model else "no default generator (name a model)"
            raise NotFound(f"model: the sampler {self.targets['sampler']} has {what} ({names})")
        return match[0]

    # ------------------------------------------------------------------------- generation

    def generate(
        self,
        reference_clip: np.ndarray,
        class_name: str,
        n: int = 1,
        *,
        model: str = "",
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        solver: str | None = None,
        text: str = "",
        decode: bool = True,
        concurrency: int = 4,
        timeout: float = 600.0,
    ) -> np.ndarray:
        """`n` synthetic clips of `class_name` guided by `reference_clip`.

        Args:
            reference_clip: uint8 (T,H,W) grey frames; its first frame's image prior and its
                motion condition the clips (and give their frame count and size).
            class_name: one of the generator's `class_names`.
            model: the generator (`generators()`); "": the sampler's default.
            seed: clip i gets seed + i; None: a random first seed. The same call again gets the
                same request ids, so the sampler returns the clips it computed (while its
                result cache holds them). Computed afresh, a seed gives the same frames
                bit for bit with `concurrency=1`; clips batched together in the sampler may
                differ by float rounding (a grey level in a few pixels).
            steps, guidance, solver: None: the settings the generator's figures were measured
                with (its card), else the model repository's `sampling.json`, as `genaug
                augment` does.
            text: the clip's text condition.
            decode: True: decoded frames; False: the latents.
            concurrency: requests in flight (the sampler batches them together).
            timeout: seconds per clip.

        Returns:
            decode: uint8 (n,T,H,W) frames, as `genaug augment` writes them; else float32
            (n,T,C,h,w) scaled latents.

        Raises:
            InvalidArgument: a bad argument (the message starts with its name), or a class the
                generator does not know (naming its classes); nothing was generated.
            NotFound: no such generator.
            GenAugError: a service call failed.
        """
        frames = _reference_clip(reference_clip)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument("n", f"must be an int >= 1, got {n!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InvalidArgument("seed", f"must be an int >= 0 or None, got {seed!r}")
        if concurrency < 1:
            raise InvalidArgument("concurrency", f"must be >= 1, got {concurrency!r}")
        generator = self.generator(model)
        if class_name not in generator.class_names:
            raise InvalidArgument(
                "class_name",
                f"{class_name!r} is not a class of generator {generator.name!r} "
                f"(its classes: {', '.join(generator.class_names) or 'none'})",
            )
        class_id = generator.class_names.index(class_name)
        steps, guidance, solver = _sampling(generator, steps, guidance, solver)
        conditions = self._reference_conditions(frames, text, timeout)
        first = secrets.randbits(62) if seed is None else seed

        def one(clip_seed: int) -> np.ndarray:
            settings = [class_id, clip_seed, steps, guidance, solver, generator.name, decode]
            clip = self.sampler.generate(
                class_id,
                conditions,
                seed=clip_seed,
                steps=steps,
                guidance_scale=guidance,
                solver=solver,
                decode=decode,
                request_id=_request_id(conditions, settings),
                model=generator.name,
                timeout=timeout,
            )
            if decode and clip.frames is None:
                raise GenAugError(grpc.StatusCode.INTERNAL, f"no frames for {clip.request_id}")
            return clip.frames if decode else clip.latents

        with ThreadPoolExecutor(max_workers=min(n, concurrency)) as pool:
            futures = [pool.submit(one, first + i) for i in range(n)]
            try:
                clips = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        if not decode:
            return np.stack(clips).astype(np.float32, copy=False)
        from clients.augment.output import to_uint8

        return np.stack([to_uint8(clip) for clip in clips])

    def _reference_conditions(self, frames: np.ndarray, text: str, timeout: float):
        """The clip's prior and motion from the services given, else its frames (the sampler
        fetches what is missing), as the batch job sends them."""
        source = GrpcConditions(self._encoder, self._motion, timeout=timeout)
        fields: dict[str, np.ndarray] = {}
        if "prior" in source.kinds:
            fields["image_prior"] = np.asarray(source.prior(frames), np.float32)
        if "motion" in source.kinds:
            motion = source.motion(frames)
            fields["motion_field"], fields["trajectories"], fields["trajectory_mask"] = motion
        if len(source.kinds) < 2:
            fields["reference_frames"] = frames
        return conditions_message(text=text, **fields)

    # ------------------------------------------------------------------------- batch job

    def augment(
        self,
        dataset_root: str | os.PathLike,
        out: str | os.PathLike,
        *,
        name: str | None = None,
        per_class: int | None = None,
        multiplier: float | None = None,
        balance: bool = False,
        model: str = "",
        **options: Any,
    ):
        """`genaug augment` on this client's services: one shard of the job (resumable: call
        it again after a failure to continue). Give exactly one of `per_class`, `multiplier`,
        `balance`.

        Args:
            dataset_root, name: the prepared dataset (`name`: default the only one there).
            out: the output dataset root (with its `.augment/` state and `report/`).
            model: the generator; "": the sampler's default.
            options: any other `AugmentOptions` field (the flags' names with underscores:
                `steps=2`, `no_filter=True`, `class_map=Path(...)`, `report=False`, ...); the
                connections are the client's. The progress bar is off unless `progress=True`.

        Returns:
            The job's `clients.augment.job.JobResult` (`written`: the kept clips' metadata
            records; `report_path`; ...).

        Raises:
            ValueError: bad options or output folder; `preflight.Refused` when the dataset does
                not fit the generator (its classes, its domain); nothing was done.
            genaug.errors.Unavailable: a service does not answer its health check.
            JobFailed: the job stopped (finished work is kept).
        """
        from clients.augment import preflight, run_options
        from clients.augment.options import AugmentOptions, channel_settings, validate

        given = sorted(CONNECTION_OPTIONS & set(options))
        if given:
            raise TypeError(f"augment: {', '.join(given)} come from the client's connections")
        options.setdefault("progress", False)
        s = self.settings
        with _token_file(s.token) as token_file:
            o = AugmentOptions(
                dataset_root=Path(dataset_root),
                name=name,
                out=Path(out),
                per_class=per_class,
                multiplier=multiplier,
                balance=balance,
                model=model or None,
                sampler=[self.targets["sampler"]],
                encoder=self.targets["encoder"],
                motion=self.targets["motion"],
                filter=self.targets["filter"],
                tls_ca=s.ca_cert,
                tls_cert=s.client_cert,
                tls_key=s.client_key,
                tls_server_name=s.server_name_override,
                auth_token_file=token_file,
                **options,
            )
            validate(o)
            preflight.check_output(o)
            settings = channel_settings(o)
            preflight.check_targets(o, settings)
            return run_options(o, preflight.check_generator(o, settings))


def _card(card_json: str) -> dict[str, Any]:
    """A card's JSON as a dict; empty when there is none or it is malformed."""
    try:
        card = json.loads(card_json or "{}")
    except ValueError:
        return {}
    return card if isinstance(card, dict) else {}


def _reference_clip(clip: Any) -> np.ndarray:
    """`reference_clip` as uint8 (T,H,W) with at least two frames, else InvalidArgument."""
    if not isinstance(clip, np.ndarray):
        raise InvalidArgument(
            "reference_clip", f"must be a numpy uint8 (T,H,W) array, got {type(clip).__name__}"
        )
    if clip.dtype != np.uint8 or clip.ndim != 3 or clip.shape[0] < 2 or 0 in clip.shape:
        raise InvalidArgument(
            "reference_clip",
            f"must be uint8 (T,H,W) grey frames with T >= 2, got {clip.dtype} {list(clip.shape)}",
        )
    return np.ascontiguousarray(clip)


def _sampling(generator: Generator, steps, guidance, solver) -> tuple[int, float, str]:
    """Steps, guidance and solver not given: the card's measured settings, else the model
    repository's `sampling.json` (the batch job's defaults)."""
    measured = (generator.card.get("figures") or {}).get("measured_with") or {}
    if steps is None or guidance is None or solver is None:
        from clients.augment.sampling_defaults import sampling_defaults

        defaults = sampling_defaults()
        steps = int(measured.get("steps", defaults.steps)) if steps is None else steps
        guidance = (
            float(measured.get("guidance", defaults.guidance)) if guidance is None else guidance
        )
        solver = str(measured.get("solver", defaults.solver)) if solver is None else solver
    return int(steps), float(guidance), str(solver)


def _request_id(conditions: pb.Conditions, settings: list) -> str:
    """Content-addressed, as the batch job's: a retry of the same request gets the same id (the
    sampler computes it once), a different request never reuses one."""
    digest = hashlib.sha256(conditions.SerializeToString(deterministic=True))
    digest.update(json.dumps(settings).encode())
    return f"api-{settings[1]}.{digest.hexdigest()[:20]}"


@contextlib.contextmanager
def _token_file(token: str | None) -> Iterator[Path | None]:
    """The token in a private temporary file for the batch job (which reads it only from a
    file or the environment, never from its options), removed on exit."""
    if not token:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="genaug-token-") as folder:
        path = Path(folder) / "token"
        path.touch(mode=0o600)
        path.write_text(token)
        yield path
