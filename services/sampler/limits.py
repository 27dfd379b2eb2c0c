"""Per-request limits of the sampler, checked on the declared shapes before anything is built.

A Generate request names its size in a few integers (num_frames, the shapes of its condition
tensors, steps); one that asks for more than the limits is refused in microseconds with the
limit in the message, before the engine allocates latents or decodes a tensor. The refusal is
INVALID_ARGUMENT naming the field: retrying the same request elsewhere cannot succeed.
"""

from __future__ import annotations

from dataclasses import dataclass

from genaug.errors import InvalidArgument


@dataclass(frozen=True)
class RequestLimits:
    """Args:
    max_frames: frames of one generated clip (num_frames, or a condition's frame count).
    max_frame_side: pixels of a reference frame's longer side (latent side x 8).
    max_steps: denoising steps.
    max_guidance: classifier-free guidance scale.
    max_text_bytes: UTF-8 bytes of the caption encoded by the encoder.
    max_text_tokens: tokens (L) of a caller's text embedding.
    """

    max_frames: int = 64
    max_frame_side: int = 512
    # 1000 DDIM steps over the 1000-step training schedule (steps_offset 1) would ask for
    # timestep 1000, one past its end: every request in that batch failed.
    max_steps: int = 999
    max_guidance: float = 50.0
    max_text_bytes: int = 4096
    max_text_tokens: int = 256

    def check(self, request, conditions) -> None:
        """Refuse a GenerateRequest that is over a limit; `request` is the proto message and
        `conditions` the conditions it is sampled with (its own, or those its digest names)."""
        if request.num_frames < 0:
            raise InvalidArgument("num_frames", f"{request.num_frames} is negative")
        self._frames("num_frames", request.num_frames)
        dims = {name: list(getattr(conditions, name).shape) for name in _FRAME_AXIS}
        for name, shape in dims.items():
            if shape:
                self._frames(f"conditions.{name}.shape", shape[0] + _FRAME_AXIS[name])
        sides = dims["reference_frames"][1:] + dims["motion_field"][2:]
        if sides and max(sides) > self.max_frame_side:
            raise InvalidArgument(
                "conditions",
                f"frames of side {max(sides)} px are over the limit of {self.max_frame_side} "
                "(--max-frame-side)",
            )
        text_bytes = len(conditions.text.encode())
        if text_bytes > self.max_text_bytes:
            raise InvalidArgument(
                "conditions.text",
                f"{text_bytes} bytes are over the limit of {self.max_text_bytes}",
            )

    def _frames(self, field: str, count: int) -> None:
        if count > self.max_frames:
            raise InvalidArgument(
                field, f"{count} frames are over the limit of {self.max_frames} (--max-frames)"
            )


# condition -> frames it implies beyond its first axis (a motion field has T-1 entries)
_FRAME_AXIS = {"reference_frames": 0, "motion_field": 1}
