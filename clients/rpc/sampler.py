"""Client of the sampler: streamed generation with progress, cancellation, idempotent retries."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from clients.rpc.errors import GenAugError, translate_errors
from genaug import wire
from genaug.digests import conditions_digest
from genaug.v1 import sampler_pb2 as pb
from genaug.v1 import sampler_pb2_grpc


@dataclass(frozen=True)
class GeneratedClip:
    request_id: str
    latents: np.ndarray  # float32 (T,C,h,w), scaled
    frames: np.ndarray | None  # float32 (T,1,H,W) in [-1,1] when decoding was asked for
    seconds: float
    # The sampler's account of the request's time (StageSeconds: prepare, queue, sampling,
    # decode); empty from a sampler that does not send it.
    stages: dict[str, float] = field(default_factory=dict)


def conditions_message(
    image_prior: np.ndarray | None = None,
    motion_field: np.ndarray | None = None,
    trajectories: np.ndarray | None = None,
    trajectory_mask: np.ndarray | None = None,
    text: str = "",
    text_embedding: np.ndarray | None = None,
    reference_frames: np.ndarray | None = None,
) -> pb.Conditions:
    message = pb.Conditions(text=text)
    for name, value in (
        ("image_prior", image_prior),
        ("motion_field", motion_field),
        ("trajectories", trajectories),
        ("trajectory_mask", trajectory_mask),
        ("text_embedding", text_embedding),
        ("reference_frames", reference_frames),
    ):
        if value is not None:
            wire.to_proto(np.asarray(value), getattr(message, name))
    return message


def stage_seconds(result: pb.GenerateResult) -> dict[str, float]:
    if not result.HasField("stages"):
        return {}
    stages = result.stages
    return {f.name: getattr(stages, f.name) for f in stages.DESCRIPTOR.fields}


# Digests a client remembers the sampler holding; the least recently used are forgotten.
_KEPT_DIGESTS = 1024


def _not_held(error: GenAugError) -> bool:
    """The sampler does not hold the conditions a request named by digest."""
    return error.code == grpc.StatusCode.FAILED_PRECONDITION and "conditions_digest" in (
        error.details or ""
    )


class SamplerClient:
    """Args:
    channel: to a sampler (or several replicas behind one target).
    reuse_conditions: send conditions that the sampler said it keeps by their digest alone
        (`GenerateRequest.conditions_digest`), and in full again where it no longer holds
        them (another replica, a restart, evicted): a reference's megabytes then cross the
        network once per sampler instead of once per clip.
    """

    def __init__(self, channel: grpc.Channel, reuse_conditions: bool = True):
        self._stub = sampler_pb2_grpc.SamplerStub(channel)
        self.reuse_conditions = reuse_conditions
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._kept_lock = threading.Lock()

    def stream(
        self, request: pb.GenerateRequest, timeout: float | None = None
    ) -> Iterator[pb.GenerateEvent]:
        """The raw event stream (queued, progress..., result); errors raise GenAugError."""
        try:
            yield from self._stub.Generate(request, timeout=timeout)
        except grpc.RpcError as error:
            raise GenAugError.from_rpc_error(error) from None

    def generate(
        self,
        class_id: int,
        conditions: pb.Conditions | None = None,
        *,
        seed: int = 0,
        steps: int = 0,
        guidance_scale: float = 0.0,
        solver: str = "",
        num_frames: int = 0,
        decode: bool = True,
        batch: bool = False,
        request_id: str | None = None,
        preview_every: int = 0,
        model: str = "",
        timeout: float | None = None,
        on_event: Callable[[pb.GenerateEvent], None] | None = None,
    ) -> GeneratedClip:
        """Generate one clip; `request_id` makes retries idempotent (one is made up if None);
        `model` names the generator (`list_models`; "" = the sampler's default)."""
        request = pb.GenerateRequest(
            request_id=request_id or uuid.uuid4().hex,
            class_id=class_id,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            solver=solver,
            num_frames=num_frames,
            decode=decode,
            priority=pb.PRIORITY_BATCH if batch else pb.PRIORITY_INTERACTIVE,
            preview_every=preview_every,
            model=model,
        )
        # Hashing 4-5 MB of conditions takes milliseconds: not while the sampler holds none.
        reuse = conditions is not None and self.reuse_conditions and self._holds_any()
        digest = conditions_digest(conditions) if reuse else ""
        if digest and self._holds(digest):
            request.conditions_digest = digest
            try:
                return self._generate(request, timeout, on_event)
            except GenAugError as error:
                if not _not_held(error):
                    raise
                self._forget(digest)  # sent in full below
            request.ClearField("conditions_digest")
        if conditions is not None:
            request.conditions.CopyFrom(conditions)
        return self._generate(request, timeout, on_event)

    def _generate(
        self,
        request: pb.GenerateRequest,
        timeout: float | None,
        on_event: Callable[[pb.GenerateEvent], None] | None,
    ) -> GeneratedClip:
        for event in self.stream(request, timeout):
            if on_event is not None:
                on_event(event)
            if event.WhichOneof("event") == "result":
                result = event.result
                if result.conditions_digest:
                    self._remember(result.conditions_digest)
                frames = (
                    wire.from_proto(result.frames, "frames") if wire.is_set(result.frames) else None
                )
                return GeneratedClip(
                    event.request_id,
                    wire.from_proto(result.latents, "latents"),
                    frames,
                    result.seconds,
                    stage_seconds(result),
                )
        raise GenAugError(grpc.StatusCode.INTERNAL, "the stream ended without a result")

    def _holds_any(self) -> bool:
        with self._kept_lock:
            return bool(self._kept)

    def _holds(self, digest: str) -> bool:
        with self._kept_lock:
            return digest in self._kept

    def _remember(self, digest: str) -> None:
        with self._kept_lock:
            self._kept[digest] = None
            self._kept.move_to_end(digest)
            while len(self._kept) > _KEPT_DIGESTS:
                self._kept.popitem(last=False)

    def _forget(self, digest: str) -> None:
        with self._kept_lock:
            self._kept.pop(digest, None)

    @translate_errors
    def cancel(self, request_id: str, timeout: float | None = 10.0) -> bool:
        return self._stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=timeout).cancelled

    @translate_errors
    def list_models(self, timeout: float | None = 10.0) -> list[pb.GeneratorInfo]:
        """The generators this sampler serves, with their class names in id order."""
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout).models)
