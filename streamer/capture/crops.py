"""Person crops for SAM-3D Body, made on the GPU with upstream's geometry.

`crop_affine` reproduces upstream's `GetBBoxCenterScale` (padding 1.25) + `TopdownAffine` (aspect fixed to 0.75,
then to the model input's) for one person box; `warp_crops` applies those affines to several cameras' images at
once with one bilinear `grid_sample` per image, matching `cv2.warpAffine(INTER_LINEAR, zero border)` then
`ToTensor` (rounded to a uint8 crop's 1/255 steps) instead of warping on the CPU. Used by
`streamer.capture.sam3d_fast`; the call contract is upstream sam-3d-body 1.0.0's (see that module).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BODY_BOX_PADDING", "CropRequest", "crop_affine", "warp_crops"]

BODY_BOX_PADDING = 1.25  # upstream GetBBoxCenterScale padding for body crops
_PRIOR_ASPECT = 0.75  # upstream TopdownAffine: first expand to w/h = 0.75, then to the model input's aspect


@dataclass(frozen=True)
class CropRequest:
    """One person to estimate: which image, the person box and the camera matrix.

    image_index: index into the list of images passed with the requests.
    box_xyxy: (4,) float, pixels, full image (x1, y1, x2, y2).
    camera_matrix: (3, 3) float, pixels (fx, fy, cx, cy), the camera that took the image.
    """

    image_index: int
    box_xyxy: np.ndarray
    camera_matrix: np.ndarray


def _fix_aspect(scale_wh: np.ndarray, aspect: float) -> np.ndarray:
    """Grow (w, h) so that w / h == aspect (upstream `fix_aspect_ratio`)."""
    w, h = float(scale_wh[0]), float(scale_wh[1])
    return np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], dtype=np.float64)


def crop_affine(box_xyxy: np.ndarray, input_size: tuple[int, int], padding: float = BODY_BOX_PADDING
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop geometry of one person box, as upstream GetBBoxCenterScale + TopdownAffine compute it (no rotation).

    box_xyxy: (4,) pixels; input_size: model input (w, h) pixels.
    Returns center (2,) px, scale (2,) px (the padded, aspect-fixed box size) and crop_from_image (2, 3) float32,
    the affine mapping full-image pixel indices to crop pixel indices.
    """
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box_xyxy: expected finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box.tolist()}")
    out_w, out_h = input_size
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    scale = _fix_aspect(_fix_aspect(np.array([box[2] - box[0], box[3] - box[1]]) * padding, _PRIOR_ASPECT),
                        out_w / out_h)
    s = out_w / scale[0]
    crop_from_image = np.array([[s, 0.0, out_w / 2 - s * center[0]],
                                [0.0, s, out_h / 2 - s * center[1]]], dtype=np.float32)
    return center.astype(np.float32), scale.astype(np.float32), crop_from_image


def warp_crops(images: Sequence[torch.Tensor], image_index: Sequence[int], crop_from_image: torch.Tensor,
               input_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops on the device, matching cv2.warpAffine(INTER_LINEAR, zero border) then ToTensor.

    images: V tensors (H_v, W_v, 3) uint8 RGB on the target device (sizes may differ).
    image_index: n ints, which image each crop comes from; crop_from_image: (n, 2, 3) float32 (best on the
    device already: then nothing waits for a host->device copy when the crops of an image are consecutive).
    Returns (n, 3, h, w) float32 in [0, 1], rounded to the 1/255 steps of a uint8 crop.
    """
    out_w, out_h = input_size
    device = images[0].device
    a = crop_from_image.to(device=device, dtype=torch.float64)
    u = torch.arange(out_w, device=device, dtype=torch.float64)
    v = torch.arange(out_h, device=device, dtype=torch.float64)
    crops = torch.empty((len(image_index), 3, out_h, out_w), device=device)
    index = np.asarray(list(image_index), dtype=np.int64)
    for img_id in sorted(set(index.tolist())):
        found = np.flatnonzero(index == img_id)
        rows: slice | torch.Tensor = (slice(int(found[0]), int(found[-1]) + 1)
                                      if found[-1] - found[0] + 1 == len(found) else torch.from_numpy(found).to(device))
        height, width = images[img_id].shape[:2]
        s, tx, ty = a[rows, 0, 0], a[rows, 0, 2], a[rows, 1, 2]
        x = (u[None, :] - tx[:, None]) / s[:, None]  # (m, w) pixel index in the image
        y = (v[None, :] - ty[:, None]) / s[:, None]  # (m, h)
        xn = (2 * x / (width - 1) - 1)[:, None, :].expand(-1, out_h, -1)
        yn = (2 * y / (height - 1) - 1)[:, :, None].expand(-1, -1, out_w)
        grid = torch.stack([xn, yn], dim=-1).float()
        src = images[img_id].permute(2, 0, 1)[None].float().expand(len(found), -1, -1, -1)
        crops[rows] = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return crops.clamp_(0, 255).round_().div_(255.0)
