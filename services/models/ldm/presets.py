"""Named hyperparameter sets of `SequenceUNet`: the paper's `sd14` and the CPU-sized `small`.

A preset is only a dict of `SequenceUNet.__init__` arguments; the model's one config is the
diffusers config those arguments register (`model.config`, written as `config.json` by
`save_pretrained`). `SequenceUNet.from_preset(name, **overrides)` builds from one.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's SD-1.4-scale UNet (about 0.9 G parameters, 32x32 latents of 256 px frames):
    # the `SequenceUNet.__init__` defaults.
    "sd14": {},
    # A few M parameters that train on a CPU: 8x8 latents with the small VAE's 8 channels for
    # 64x64 frames, 64 image-prior tokens, 384-d MiniLM text.
    "small": dict(
        in_channels=8,  # the small VAE's latent channels
        out_channels=8,
        sample_size=8,
        block_out_channels=(64, 128),
        attention_levels=(True, True),
        layers_per_block=1,
        num_attention_heads=4,
        cross_attention_dim=128,
        text_embed_dim=384,
        image_prior_pool=4,
        motion_embed_channels=(8, 16, 32, 32),
    ),
}


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The `SequenceUNet` arguments of preset `name` (`"sd14"` or `"small"`) with `overrides`
    applied (e.g. `num_classes=3`, `sequence=False`).

    Raises:
        ValueError: Unknown preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown LDM preset {name!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}
