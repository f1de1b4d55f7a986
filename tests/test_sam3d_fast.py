"""Fast SAM-3D Body path (streamer/capture/sam3d_fast.py) on the CPU.

The real model needs gated weights and a GPU, so the wrapper logic runs here on `StandInSam3dBody`, a STAND-IN:
a tiny random network with upstream SAM3DBody's call contract (image_mean/std, backbone, backbone_dtype,
decoder.layers, head_pose.faces, data_preprocess, prompt_encoder, _initialize_batch, forward_decoder,
forward_step(batch, decoder_type) -> {"mhr"}), including the habits of upstream's code that block CUDA-graph
capture (a device max() check, boolean-mask writes in the prompt encoder).
The agreement of the fast path with the real model is measured on a GPU by `streamer bench estimator`.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from streamer.capture.crops import CropRequest, crop_affine, warp_crops
from streamer.capture.cuda_graphs import SyncFree
from streamer.capture.estimator import View
from streamer.capture.sam3d_fast import FastBodyEstimator, FastSam3dEstimator

SIZE = 32  # stand-in model input (w = h), pixels


class _StandInLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(dim, dim)
        self.attend = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = image_tokens.mean(dim=1, keepdim=True)
        return tokens + torch.tanh(self.mix(tokens) + self.attend(context)), image_tokens


class _StandInPromptEncoder(nn.Module):
    """Embeds keypoint prompts the way upstream's does: an input check and boolean-mask writes (both syncs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.point = nn.Linear(2, dim)
        self.invalid_point_embed = nn.Embedding(1, dim)

    def forward(self, keypoints: torch.Tensor, boxes=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        points, labels = keypoints[:, :, :2], keypoints[:, :, -1]
        assert points.min() >= 0 and points.max() <= 1
        embedding = self.point(points)
        embedding[labels == -2] = 0.0
        embedding[labels == -2] += self.invalid_point_embed.weight[0]
        return embedding, labels > -2


class StandInSam3dBody(nn.Module):
    """STAND-IN for upstream SAM3DBody: same call contract, tiny random layers, body outputs of the right shapes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.cfg = SimpleNamespace(MODEL=SimpleNamespace(IMAGE_SIZE=[SIZE, SIZE]))
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
        self.backbone = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.backbone_dtype = torch.float32
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([_StandInLayer(16) for _ in range(2)])
        self.head_pose = nn.Module()
        self.head_pose.faces = nn.Parameter(torch.randint(0, 100, (50, 3)), requires_grad=False)
        self.head = nn.Linear(16, 70 * 3 + 3 + 133 + 108 + 45 + 28 + 3)
        self.prompt_encoder = _StandInPromptEncoder(16)
        self.calls = 0
        self.batch_sizes_seen: list[int] = []

    def data_preprocess(self, inputs: torch.Tensor, crop_width: bool = False) -> torch.Tensor:
        if inputs.max() > 1:  # a device sync, as upstream's
            inputs = inputs / 255.0
        return (inputs - self.image_mean) / self.image_std

    def _initialize_batch(self, batch: dict) -> None:
        self._batch_size, self._num_person = batch["img"].shape[:2]
        self.batch_sizes_seen.append(self._batch_size)

    def forward_decoder(self, image_embeddings: torch.Tensor, batch: dict, prompt: torch.Tensor | None = None
                        ) -> dict:
        tokens = image_embeddings.flatten(2).mean(dim=2, keepdim=True).transpose(1, 2)  # (B, 1, C)
        if prompt is not None:
            tokens = tokens + prompt
        image_tokens = image_embeddings.flatten(2).transpose(1, 2)
        for layer in self.decoder.layers:
            tokens, image_tokens = layer(tokens, image_tokens)
            self.head_pose.faces.cpu().numpy()  # upstream copies the faces out after every layer
        out = self.head(tokens[:, 0])
        keypoints_3d, rest = out[:, :210].view(-1, 70, 3), out[:, 210:]
        cam_t = rest[:, :3] + torch.tensor([0.0, 0.0, 5.0])
        cam_int = batch["cam_int"]
        points = keypoints_3d + cam_t[:, None]
        uv = points[..., :2] / points[..., 2:3] * cam_int[:, None, [0, 1], [0, 1]] + cam_int[:, None, [0, 1], [2, 2]]
        sizes = [133, 108, 45, 28, 3]
        body_pose, hand, shape, scale, global_rot = torch.split(rest[:, 3:], sizes, dim=1)
        return {"pred_keypoints_3d": keypoints_3d, "pred_keypoints_2d": uv, "pred_cam_t": cam_t,
                "body_pose": body_pose, "hand": hand, "shape": shape, "scale": scale, "global_rot": global_rot}

    def forward_step(self, batch: dict, decoder_type: str = "body") -> dict:
        assert decoder_type == "body"
        self.calls += 1
        x = self.data_preprocess(batch["img"].flatten(0, 1))
        embeddings = self.backbone(x.type(self.backbone_dtype)).type(x.dtype)
        keypoints = torch.zeros((x.shape[0], 1, 3)).to(batch["img"])  # upstream's first-pass dummy prompt
        keypoints[:, :, -1] = -2
        prompt, _ = self.prompt_encoder(keypoints=keypoints)
        return {"mhr": self.forward_decoder(embeddings, batch, prompt=prompt)}


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(120, 160), (90, 200), (120, 160)]
    return [np.ascontiguousarray(cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                                            interpolation=cv2.INTER_CUBIC)) for h, w in sizes]


def _requests() -> list[CropRequest]:
    K = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])
    return [CropRequest(0, np.array([20, 10, 70, 110], np.float32), K),
            CropRequest(1, np.array([-10, 5, 40, 95], np.float32), K * [[1.1], [1.1], [1]]),
            CropRequest(2, np.array([100, 30, 150, 119], np.float32), K),
            CropRequest(0, np.array([90, 20, 130, 100], np.float32), K)]


def _three_point_affine(center: np.ndarray, scale: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Upstream get_warp_matrix (rotation 0): centre, a point above it, and a third point 90 degrees on."""
    src_dir, dst_dir = np.array([0.0, -0.5 * scale[0]]), np.array([0.0, -0.5 * out_size[0]])
    src = np.stack([center, center + src_dir, center + src_dir + [src_dir[1], -src_dir[0]]]).astype(np.float32)
    dst_c = np.array([out_size[0] * 0.5, out_size[1] * 0.5])
    dst = np.stack([dst_c, dst_c + dst_dir, dst_c + dst_dir + [dst_dir[1], -dst_dir[0]]]).astype(np.float32)
    return cv2.getAffineTransform(src, dst)


@settings(max_examples=60, deadline=None)
@given(x1=st.floats(-200, 1800), y1=st.floats(-200, 1000), w=st.floats(2, 900), h=st.floats(2, 1100))
def test_crop_affine_matches_upstream_three_point_construction(x1, y1, w, h):
    box = np.array([x1, y1, x1 + w, y1 + h])
    center, scale, affine = crop_affine(box, (512, 512))
    # padding 1.25, then aspect 0.75, then square: the side is the larger of 1.25 h and 1.25 w / 0.75
    side = max(1.25 * h, 1.25 * w / 0.75)
    np.testing.assert_allclose(scale, [side, side], rtol=1e-5)
    np.testing.assert_allclose(center, [x1 + w / 2, y1 + h / 2], rtol=1e-6, atol=1e-3)
    expected = _three_point_affine(center.astype(np.float64), scale.astype(np.float64), (512, 512))
    np.testing.assert_allclose(affine, expected, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("box", [[10, 10, 10, 50], [10, 50, 40, 20], [0, 0, np.nan, 10], [0, 0, np.inf, 10]])
def test_crop_affine_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box_xyxy"):
        crop_affine(np.array(box, np.float64), (512, 512))


def test_warp_crops_matches_cv2_warp_affine_with_zero_border():
    images = _images()
    requests = _requests()
    affines = np.stack([crop_affine(r.box_xyxy, (64, 64))[2] for r in requests])
    crops = warp_crops([torch.from_numpy(im) for im in images], [r.image_index for r in requests],
                       torch.from_numpy(affines), (64, 64))
    assert crops.shape == (4, 3, 64, 64)
    for i, r in enumerate(requests):
        expected = cv2.warpAffine(images[r.image_index], affines[i], (64, 64), flags=cv2.INTER_LINEAR)
        diff = np.abs(crops[i].permute(1, 2, 0).numpy() * 255 - expected)
        assert diff.max() <= 1.0 + 1e-3  # cv2 rounds its bilinear weights to 1/32; at most one grey level apart
        assert diff.mean() < 0.05
    # request 1 reaches past the left edge: that part is black, as cv2's constant border
    assert float(crops[1, :, :, :2].abs().max()) == 0.0


def _stock_reference(model: StandInSam3dBody, fast: FastBodyEstimator, images, requests) -> dict:
    """Per-crop calls of forward_step (the stock, one-at-a-time way) on the same crops."""
    outs = []
    for r in requests:
        batch = fast.make_batch(images, [r])
        model._initialize_batch(batch)
        with torch.no_grad():
            outs.append(model.forward_step(batch)["mhr"])
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def test_batched_fast_path_equals_per_crop_stock_calls_and_restores_the_model():
    model = StandInSam3dBody().eval()
    backbone, layers, faces = model.backbone, list(model.decoder.layers), model.head_pose.faces
    fast = FastBodyEstimator(model, cuda_graphs=False)
    images, requests = _images(), _requests()
    reference = _stock_reference(model, fast, images, requests)
    calls = model.calls
    out = fast(images, requests)
    assert model.calls == calls + 1  # one forward for all four crops
    for key, value in reference.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-5)
    assert model.backbone is backbone and list(model.decoder.layers) == layers and model.head_pose.faces is faces
    assert "forward_decoder" not in model.__dict__


def test_model_is_restored_when_the_forward_raises():
    model = StandInSam3dBody().eval()
    backbone, layers = model.backbone, list(model.decoder.layers)
    fast = FastBodyEstimator(model, cuda_graphs=False, decoder_autocast=torch.bfloat16)
    batch = fast.make_batch(_images(), _requests())
    with pytest.raises(ValueError, match="precomputed embeddings"):
        fast.decode(batch, fast.encode(batch)[:2])  # wrong number of embeddings
    assert model.backbone is backbone and list(model.decoder.layers) == layers


def test_bf16_decoder_layers_run_in_bf16_and_stay_close():
    model = StandInSam3dBody().eval()
    images, requests = _images(), _requests()
    exact = FastBodyEstimator(model, cuda_graphs=False)(images, requests)["pred_keypoints_3d"]
    bf16 = FastBodyEstimator(model, cuda_graphs=False, decoder_autocast=torch.bfloat16)(images, requests)
    rel = float((bf16["pred_keypoints_3d"] - exact).norm() / exact.norm())
    assert 0 < rel < 3e-2  # different (bf16 did run) but close
    assert bf16["pred_keypoints_3d"].dtype == torch.float32


@pytest.mark.parametrize("graph_decoder", [False, True])
def test_tf32_decoder_sets_tf32_only_while_the_decoder_runs_and_restores_it(graph_decoder):
    model = StandInSam3dBody().eval()
    images, requests = _images(), _requests()
    seen = []
    model.decoder.layers[0].register_forward_hook(lambda *_: seen.append(torch.backends.cuda.matmul.allow_tf32))
    before = torch.backends.cuda.matmul.allow_tf32
    exact = FastBodyEstimator(model, cuda_graphs=False, graph_decoder=graph_decoder)(images, requests)
    tf32 = FastBodyEstimator(model, cuda_graphs=False, graph_decoder=graph_decoder, decoder_tf32=True)(images, requests)
    assert seen[0] is before and seen[-1] is True  # the second estimator's decoder ran with TF32 on
    assert torch.backends.cuda.matmul.allow_tf32 is before  # and it was restored
    for key in ("pred_keypoints_3d", "pred_cam_t"):  # TF32 changes nothing on the CPU
        torch.testing.assert_close(tf32[key], exact[key], rtol=0, atol=0)


@pytest.mark.parametrize("graph_decoder", [False, True])
def test_pipelined_calls_give_the_same_outputs_as_separate_calls_in_order(graph_decoder):
    model = StandInSam3dBody().eval()
    fast = FastBodyEstimator(model, cuda_graphs=False, graph_decoder=graph_decoder, batch_sizes=(2,))
    images, requests = _images(), _requests()
    calls = [(images, requests[:2]), (images[::-1], requests[2:]), (images, requests[3:])]
    piped = list(fast.pipelined(iter(calls)))
    assert len(piped) == 3
    for (imgs, reqs), out in zip(calls, piped):
        want = fast(imgs, reqs)
        assert out["pred_cam_t"].shape[0] == len(reqs)
        torch.testing.assert_close(out["pred_cam_t"], want["pred_cam_t"])
        torch.testing.assert_close(out["pred_keypoints_2d"], want["pred_keypoints_2d"])
    pending = fast.submit(images, requests[:1])  # off CUDA a submitted call has run already
    torch.testing.assert_close(pending.result()["pred_cam_t"], fast(images, requests[:1])["pred_cam_t"])


def test_backbone_precisions_copy_the_backbone_and_leave_the_model_alone():
    model = StandInSam3dBody().eval()
    model.backbone = nn.Sequential(nn.Conv2d(3, 32, kernel_size=8, stride=8), _ChannelLinear(32, 16))
    backbone = model.backbone
    images, requests = _images(), _requests()
    exact = FastBodyEstimator(model, cuda_graphs=False)(images, requests)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp8", torch.float32), ("fp8-fast-accum", torch.float32)):
        fast = FastBodyEstimator(model, cuda_graphs=False, precision=precision)
        assert fast.backbone_dtype == dtype and model.backbone is backbone
        assert isinstance(backbone[1].linear, nn.Linear)  # the model's own layer is untouched
        out = fast(images, requests)
        rel = float((out["pred_keypoints_2d"] - exact["pred_keypoints_2d"]).norm()
                    / exact["pred_keypoints_2d"].norm())
        assert 0 < rel < 5e-2, precision  # changed (the copy ran) but close
    with pytest.raises(ValueError, match="precision"):
        FastBodyEstimator(model, precision="int4")
    model.backbone = nn.Conv2d(3, 16, kernel_size=8, stride=8)  # no linear layer at all
    with pytest.raises(ValueError, match="no linear layer"):
        FastBodyEstimator(model, precision="fp8")


class _ChannelLinear(nn.Module):
    """A linear layer over the channels of a (B, C, h, w) map (as a ViT's MLP over patch tokens)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_make_batch_rejects_bad_input():
    fast = FastBodyEstimator(StandInSam3dBody().eval(), cuda_graphs=False)
    images, requests = _images(), _requests()
    with pytest.raises(ValueError, match="at least one"):
        fast.make_batch(images, [])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        fast.make_batch([images[0], images[1].astype(np.float32)], requests[:2])
    with pytest.raises(ValueError, match="image_index 5"):
        fast.make_batch(images, [CropRequest(5, requests[0].box_xyxy, requests[0].camera_matrix)])
    with pytest.raises(ValueError, match="camera_matrix"):
        fast.make_batch(images, [CropRequest(0, requests[0].box_xyxy, np.eye(4))])


class _StockStandIn:
    """STAND-IN for upstream SAM3DBodyEstimator.process_one_image (finds one person per image)."""

    def __init__(self, fast: FastBodyEstimator) -> None:
        self.fast = fast
        self.calls: list[str] = []

    def process_one_image(self, image, bboxes=None, cam_int=None, bbox_thr=0.5, inference_type="full"):
        self.calls.append(inference_type)
        h, w = image.shape[:2]
        box = np.array([w * 0.25, h * 0.1, w * 0.75, h * 0.9], np.float32)
        return self.fast.estimate([image], [CropRequest(0, box, cam_int.numpy()[0])])


def test_fast_estimator_serves_hinted_views_in_one_forward_and_unhinted_views_through_stock():
    model = StandInSam3dBody().eval()
    fast = FastBodyEstimator(model, cuda_graphs=False)
    stock = _StockStandIn(fast)
    images, requests = _images(), _requests()
    K = requests[0].camera_matrix
    views = [View("a", images[0], K, boxes=np.stack([requests[0].box_xyxy, requests[3].box_xyxy]),
                  box_scores=np.array([0.9, 0.4], np.float32), track_ids=np.array([7, 8])),
             View("b", images[1], K),  # no boxes: acquisition through the stock call
             View("c", images[2], K, boxes=np.zeros((0, 4), np.float32))]
    persons = FastSam3dEstimator(fast, stock).estimate(views)
    assert [len(p) for p in persons] == [2, 1, 0]
    assert [p.track_id for p in persons[0]] == [7, 8] and persons[0][0].score == pytest.approx(0.9)
    assert stock.calls == ["body"]
    # the fast persons equal a one-crop call on the same box
    single = fast.estimate([images[0]], [CropRequest(0, requests[3].box_xyxy, K)])[0]
    np.testing.assert_allclose(persons[0][1].params["cam_t"], single["pred_cam_t"], rtol=1e-5)
    with pytest.raises(ValueError, match="no boxes"):
        FastSam3dEstimator(fast, None).estimate(views)


def test_fast_estimator_submitted_calls_give_estimate_results_in_order():
    model = StandInSam3dBody().eval()
    fast = FastBodyEstimator(model, cuda_graphs=False)
    estimator = FastSam3dEstimator(fast, _StockStandIn(fast))
    images, requests = _images(), _requests()
    K = requests[0].camera_matrix
    frame_sets = [[View("a", images[0], K, boxes=requests[0].box_xyxy[None], track_ids=np.array([3])),
                   View("b", images[1], K)],
                  [View("a", images[2], K, boxes=np.stack([requests[2].box_xyxy, requests[0].box_xyxy]))]]
    first = estimator.submit(frame_sets[0])
    second = estimator.submit(frame_sets[1])  # submitted before the first is read (a two-deep pipeline)
    for pending, views in ((first, frame_sets[0]), (second, frame_sets[1])):
        got, want = pending.result(), estimator.estimate(views)
        assert [len(p) for p in got] == [len(p) for p in want]
        for persons_got, persons_want in zip(got, want):
            for a, b in zip(persons_got, persons_want):
                assert a.track_id == b.track_id
                np.testing.assert_allclose(a.params["cam_t"], b.params["cam_t"], rtol=1e-6)
    assert [len(p) for p in first.result()] == [1, 1] and first.result()[0][0].track_id == 3


def test_make_batch_holds_upstream_per_crop_numbers():
    fast = FastBodyEstimator(StandInSam3dBody().eval(), cuda_graphs=False)
    images, requests = _images(), _requests()
    batch = fast.make_batch(images, requests)
    for i, r in enumerate(requests):
        center, scale, affine = crop_affine(r.box_xyxy, (SIZE, SIZE))
        h, w = images[r.image_index].shape[:2]
        np.testing.assert_array_equal(batch["bbox_center"][i, 0].numpy(), center)
        np.testing.assert_array_equal(batch["bbox_scale"][i, 0].numpy(), scale)
        np.testing.assert_array_equal(batch["affine_trans"][i, 0].numpy(), affine)
        np.testing.assert_array_equal(batch["bbox"][i, 0].numpy(), r.box_xyxy.astype(np.float32))
        np.testing.assert_array_equal(batch["cam_int"][i].numpy(), r.camera_matrix.astype(np.float32))
        np.testing.assert_array_equal(batch["ori_img_size"][i, 0].numpy(), [w, h])
        np.testing.assert_array_equal(batch["img_size"][i, 0].numpy(), [SIZE, SIZE])
    assert batch["img"].shape == (4, 1, 3, SIZE, SIZE) and batch["cam_int"].shape == (4, 3, 3)
    assert all(v.dtype == torch.float32 for v in batch.values())


def test_graph_decoder_path_equals_the_eager_path_without_any_sync_and_restores_the_model():
    """Off CUDA, graph_decoder runs exactly the code it would record, under the sync-free mode (where the stand-in's
    device max() check and boolean-mask prompt writes would raise): same outputs as the eager path."""
    model = StandInSam3dBody().eval()
    images, requests = _images(), _requests()
    eager = FastBodyEstimator(model, cuda_graphs=False)(images, requests)
    graphed = FastBodyEstimator(model, cuda_graphs=False, graph_decoder=True)
    for _ in range(2):  # the dummy prompt's embedding is cached per batch size
        out = graphed(images, requests)
        for key, value in eager.items():
            torch.testing.assert_close(out[key], value, rtol=0, atol=0)
    assert set(graphed._dummy_prompts) == {4}
    assert not {"data_preprocess", "forward_decoder"} & set(model.__dict__)
    assert "forward" not in model.prompt_encoder.__dict__
    plain = FastBodyEstimator(model, cuda_graphs=False)
    with pytest.raises(RuntimeError, match="waits for the device"), SyncFree(torch.device("cpu")), torch.no_grad():
        plain(images, requests)  # the stand-in does sync without the bypasses
    with pytest.raises(ValueError, match="exclude each other"):
        FastBodyEstimator(model, graph_decoder=True, compile_decoder=True)


def test_batch_sizes_pad_calls_to_a_few_sizes_with_the_same_outputs_and_warm_up_records_them():
    model = StandInSam3dBody().eval()
    images, requests = _images(), _requests()
    plain = FastBodyEstimator(model, cuda_graphs=False)(images, requests[:3])
    padded = FastBodyEstimator(model, cuda_graphs=False, graph_decoder=True, batch_sizes=(8, 2))
    assert padded.batch_sizes == (2, 8)
    model.batch_sizes_seen.clear()
    out = padded(images, requests[:3])
    assert model.batch_sizes_seen == [8]
    for key, value in plain.items():
        assert out[key].shape == value.shape
        torch.testing.assert_close(out[key], value, rtol=1e-4, atol=1e-5)  # batch size changes GEMM blocking
    padded(images, requests)  # 4 crops: also 8
    padded(images, requests[:1])  # 1 crop: 2
    assert model.batch_sizes_seen == [8, 8, 2]
    model.batch_sizes_seen.clear()
    stock = _StockStandIn(padded)
    FastSam3dEstimator(padded, stock).estimate([View("a", images[0], requests[0].camera_matrix)])
    assert model.batch_sizes_seen[:2] == [2, 8]  # the first call warms both sizes (then the stock call runs)
    with pytest.raises(ValueError, match="batch_sizes"):
        FastBodyEstimator(model, batch_sizes=(0, 4))


@pytest.fixture
def torch_threads():
    """Restores torch's CPU thread count (the capture node's estimator sets it for the whole process)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_capture_node_setting_fast_builds_the_fast_path_for_its_cameras(torch_threads):
    """`sam3d_inference = "fast"` in a capture node: the fast estimator over the upstream object's model, padded
    to one crop per camera of the process; its persons equal the fast path's own (STAND-IN model, CPU)."""
    from nodes.capture import Settings, sam3d_estimator
    from streamer.capture.sam3d import Sam3dEstimator

    model = StandInSam3dBody().eval()
    upstream = SimpleNamespace(model=model)
    settings = Settings(cameras=("a", "b"), estimator="sam3d", sam3d_inference="fast", sam3d_device="cpu")
    estimator = sam3d_estimator(upstream, settings)
    assert isinstance(estimator, FastSam3dEstimator) and estimator.stock is upstream
    assert estimator.fast.model is model and estimator.fast.batch_sizes == (2,)
    images, requests = _images(), _requests()
    K = requests[0].camera_matrix
    views = [View("a", images[0], K, boxes=requests[0].box_xyxy[None]),
             View("b", images[1], K, boxes=requests[1].box_xyxy[None])]
    persons = estimator.estimate(views)
    direct = FastBodyEstimator(model, cuda_graphs=False).estimate(
        images[:2], [CropRequest(0, requests[0].box_xyxy, K), CropRequest(1, requests[1].box_xyxy, K)])
    for got, want in zip(persons, direct):
        np.testing.assert_allclose(got[0].params["cam_t"], want["pred_cam_t"], rtol=1e-5)
    assert not estimator.fast.decoder_tf32  # on the CPU: nothing to speed up
    on_gpu = dict(cameras=("a",), estimator="sam3d", sam3d_inference="fast", sam3d_device="cuda")
    with pytest.MonkeyPatch.context() as patch:  # built, not run: only the options are read
        patch.setattr(FastBodyEstimator, "__init__", lambda self, model, **options: self.__dict__.update(options))
        assert sam3d_estimator(upstream, Settings(**on_gpu)).fast.decoder_tf32
        assert not sam3d_estimator(upstream, Settings(**on_gpu, sam3d_decoder_tf32=False)).fast.decoder_tf32
    gathered = sam3d_estimator(upstream, Settings(**{**on_gpu, "cameras": ("a", "b", "c")}, frame_sets_per_call=2))
    assert gathered.fast.batch_sizes == (6,)  # recorded for every crop of a call: 3 cameras x 2 frame sets
    stock = sam3d_estimator(upstream, Settings(cameras=("a",), estimator="sam3d", sam3d_inference="body",
                                               sam3d_cpu_threads=1))
    assert torch.get_num_threads() == 1  # the GPU does the work: few CPU threads, no spinning pool
    assert isinstance(stock, Sam3dEstimator) and stock.inference_type == "body"
