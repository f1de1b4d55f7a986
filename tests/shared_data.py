"""Where the shared real data lives for tests: `<repo>/../shared/data`, or `$STREAMER_SHARED_DATA`.

It is not part of the project; tests that need it skip with a reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

__all__ = ["SAM3D_OUTPUTS", "SHARED", "load_sam3d_outputs"]

SHARED = Path(os.environ.get("STREAMER_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
SAM3D_OUTPUTS = SHARED / "sam3d_body_outputs"


def load_sam3d_outputs() -> list[dict]:
    """The four real SAM-3D Body output dicts (npz, no pickle); skips the test when the data is absent."""
    if not SAM3D_OUTPUTS.is_dir():
        pytest.skip(f"shared test data not found at {SAM3D_OUTPUTS} (see ../shared/reference/data.md)")
    outs = []
    for i in range(4):
        with np.load(SAM3D_OUTPUTS / f"img_subj0{i}.npz", allow_pickle=False) as z:
            outs.append({k: z[k] for k in z.files})
    return outs
