"""The sync-free dispatch mode that lets upstream's decoder be recorded into a CUDA graph
(streamer/capture/cuda_graphs.py), on the CPU: what it turns into device constants and `torch.where`s must
compute exactly what the original indexing does, and every op that would sync must raise. The whole decoder
recorded under it is tested in tests/test_sam3d_fast.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.capture.cuda_graphs import SyncFree, expand_host_indices, masked_write


def wrap_and_fix(angles: torch.Tensor, half: torch.Tensor, rows: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """roma.unitquat_to_euler's kind of masked assignments (elementwise), plus a row mask with a broadcast add."""
    a = angles.clone()
    degenerate = torch.abs(half) <= 0.1
    a[:, 2][degenerate] = 0
    a[:, 0][degenerate] = 2 * half[degenerate]
    for k in range(3):
        column = a[:, k]
        column[column < -np.pi] += 2 * np.pi
        column[column > np.pi] -= 2 * np.pi
    a[rows] += offset
    return a


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12))
def test_sync_free_mode_makes_elementwise_mask_assignments_exact_where_writes(seed, n):
    g = torch.Generator().manual_seed(seed)
    angles = (torch.rand(n, 3, generator=g) - 0.5) * 14
    half = torch.rand(n, generator=g) - 0.5
    rows = torch.rand(n, generator=g) > 0.5
    offset = torch.randn(3, generator=g)
    expected = wrap_and_fix(angles, half, rows, offset)
    with SyncFree(torch.device("cpu"), elementwise_functions=[("tests/test_cuda_graphs.py", "wrap_and_fix")]):
        got = wrap_and_fix(angles, half, rows, offset)
    assert torch.equal(got, expected)  # bitwise: the same arithmetic at the selected places


def test_sync_free_mode_refuses_device_syncs_and_masks_outside_elementwise_functions():
    x = torch.arange(6.0)
    with SyncFree(torch.device("cpu")):
        for sync in (lambda: x.sum().item(), lambda: x.nonzero(), lambda: bool(x.max() > 1), lambda: x[x > 2]):
            with pytest.raises(RuntimeError, match="waits for the device"):
                sync()
        picked = x[torch.tensor([1, 3])]  # integer indices are fine
    assert picked.tolist() == [1.0, 3.0]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lead=st.integers(0, 1))
def test_expand_host_indices_equals_boolean_mask_indexing(seed, lead):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 4, generator=g)
    mask = torch.rand(5, 4, generator=g) > 0.5 if lead == 0 else torch.rand(3, 5, generator=g) > 0.5
    indices = [None, mask] if lead == 0 else [mask]
    seen = []
    expanded = expand_host_indices(indices, lambda t: seen.append(t) or t)
    assert all(t.dtype == torch.int64 for t in seen) and len(seen) == 2
    assert torch.equal(torch.ops.aten.index.Tensor(x, expanded), torch.ops.aten.index.Tensor(x, indices))
    values = torch.randn(3, int(mask.sum()), generator=g) if lead == 0 else torch.randn(int(mask.sum()), 4, generator=g)
    a, b = x.clone(), x.clone()
    torch.ops.aten.index_put_(a, indices, values, True)
    torch.ops.aten.index_put_(b, expanded, values, True)
    assert torch.equal(a, b)


def test_masked_write_rejects_compacted_values_and_partial_masks():
    x = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="do not broadcast"):
        masked_write(x, torch.tensor([True, False, True, False]), torch.ones(2, 3), accumulate=False)
    with pytest.raises(RuntimeError, match="leading dims"):
        masked_write(x, torch.tensor([True, False]), torch.ones(()), accumulate=False)
    masked_write(x, torch.tensor([True, False, True, False]), torch.full((4, 3), 2.0), accumulate=True)
    assert x[:, 0].tolist() == [2.0, 0.0, 2.0, 0.0]


def test_sync_free_modes_keep_list_index_semantics():
    x = torch.arange(24.0).reshape(2, 3, 4)
    expected = x.clone()
    expected[..., [1, 2]] *= -1
    expected[:, [0, 2]] += 1
    got = x.clone()
    with SyncFree(torch.device("cpu")).active():
        got[..., [1, 2]] *= -1
        got[:, [0, 2]] += 1
        picked = got[:, [True, False, True]]
        grid = got[:, :, [[0, 1], [2, 3]]]
    assert torch.equal(got, expected)
    assert torch.equal(picked, expected[:, [0, 2]]) and torch.equal(grid, expected[:, :, [[0, 1], [2, 3]]])
