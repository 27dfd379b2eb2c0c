"""Data ingest, preprocessing and the seed's on-disk layout (no gRPC, no other service).

Modules: `readers` (DICOM/NIfTI/video/slice folders -> frames; `dicom` for DICOM), `video`
(the one PyAV grey decoder and the clip encoders, for ingest and the motion service),
`modality`, `burned_in`, `intensity`, `geometry`, `sampling` (the reference's uniform clip
sampling), `layout` (reader and writer of `<DS>_data/` and `<DS>_volume/`), `discover`,
`split`, `privacy`, `safety` (paths, limits, outputs apart from inputs), `builder`, `phantoms`
(the bundled benchmark dataset) and `prepare` (`genaug prepare`; its CLI is `clients.prepare`).
Errors name this layer's parameters (`size`, `ct_window`), never CLI flags. Names below are
imported lazily, so `import services.data.layout` does not pull in pydicom or nibabel.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "layout",
    "Item": "layout",
    "load_dataset": "layout",
    "read_clip": "layout",
    "read_slice": "layout",
    "write_clip": "layout",
    "write_slice": "layout",
    "append_metadata": "layout",
    "write_metadata": "layout",
    "read_metadata": "layout",
    "SamplingConfig": "sampling",
    "sample_clips": "sampling",
    "ensure_bundled_dataset": "phantoms",
    "generate_phantom_dataset": "phantoms",
    "PHANTOM_NAME": "phantoms",
    "prepare_dataset": "prepare",
    "PrepareConfig": "prepare",
    "read_source": "readers",
    "DatasetWriter": "builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
