"""The custom CUDA NMS kernel (engines/cuda/nms_kernel.cu) and its host code (engines/cuda_nms.py).

Without a GPU: the .cu file must compile cleanly with nvcc and with NVRTC (the runtime the code uses), and a
NumPy emulation of the kernels' exact tile/bitmask algorithm must keep the same boxes, in the same order, as
torchvision.ops.batched_nms. With a GPU (marked ``gpu``): the kernel itself against torchvision.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms

from engines.base import EngineError
from engines.cuda import NMS_KERNEL_SOURCE
from engines.cuda.nms_emulation import emulate_batched_nms
from engines.cuda.synthetic import clustered_detections
from engines.cuda_nms import batched_nms_cuda, prepare_candidates

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou: float,
    score_threshold: float | None = None,
    top_k: int | None = None,
    max_output: int | None = None,
) -> list[np.ndarray]:
    """torchvision.ops.batched_nms per image after the same score filter and top-k, best score first."""
    out = []
    for b in range(boxes.shape[0]):
        idx = np.arange(boxes.shape[1])
        if score_threshold is not None:
            idx = idx[scores[b, idx] >= score_threshold]
        idx = idx[np.argsort(-scores[b, idx], kind="stable")]
        if top_k is not None:
            idx = idx[:top_k]
        kept = tv_batched_nms(
            torch.from_numpy(boxes[b, idx]),
            torch.from_numpy(scores[b, idx]),
            torch.from_numpy(classes[b, idx]),
            iou,
        ).numpy()
        kept = idx[kept]
        # canonical order: score descending, ties by lower index (the documented tie-break)
        kept = kept[np.lexsort((kept, -scores[b, kept]))]
        out.append(kept[:max_output] if max_output is not None else kept)
    return out


def emulate(boxes, scores, classes, iou, score_threshold=None, top_k=None, max_output=None):
    cand = prepare_candidates(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), score_threshold, top_k
    )
    return emulate_batched_nms(
        cand.boxes.numpy(), cand.classes.numpy(), cand.counts.numpy(), cand.order.numpy(), iou, max_output
    )


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"image {b}")


# ---- compilation (no GPU needed) ----


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def _run_ok(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command (compiler, harness); fail the test with its stderr unless it succeeds."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def test_kernel_compiles_with_nvcc_for_sm90(tmp_path):
    ptx = tmp_path / "nms.ptx"
    res = _run_ok(
        ["nvcc", "-arch=sm_90", "-ptx", "-Werror", "all-warnings", str(NMS_KERNEL_SOURCE), "-o", str(ptx)]
    )
    assert res.stderr.strip() == "", f"nvcc warnings: {res.stderr}"
    text = ptx.read_text()
    assert ".entry nms_mask_kernel(" in text
    assert ".entry nms_reduce_kernel(" in text
    cubin = tmp_path / "nms.cubin"
    _run_ok(
        [
            "nvcc",
            "-arch=sm_90",
            "--cubin",
            "-Werror",
            "all-warnings",
            str(NMS_KERNEL_SOURCE),
            "-o",
            str(cubin),
        ]
    )
    assert cubin.read_bytes()[:4] == b"\x7fELF"


def test_kernel_compiles_with_nvrtc():
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (installed with CUDA torch) is missing")
    from engines.cuda.runtime import compile_cubin

    for arch in ("sm_80", "sm_90"):
        cubin = compile_cubin(NMS_KERNEL_SOURCE, arch)
        assert cubin[:4] == b"\x7fELF", arch
        assert b"nms_mask_kernel" in cubin and b"nms_reduce_kernel" in cubin


def test_nvrtc_error_names_the_file(tmp_path):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (installed with CUDA torch) is missing")
    from engines.cuda.runtime import compile_cubin

    bad = tmp_path / "broken.cu"
    bad.write_text('extern "C" __global__ void k(int* x) { x[0] = undefined_name; }\n')
    with pytest.raises(EngineError, match=r"broken\.cu.*sm_90[\s\S]*undefined_name"):
        compile_cubin(bad, "sm_90")


# ---- the kernel source itself, run on the CPU (one std::thread per CUDA thread; no GPU needed) ----


@pytest.fixture(scope="module")
def host_harness(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed (needed to run the kernel source on the CPU)")
    exe = tmp_path_factory.mktemp("harness") / "nms_host_harness"
    src = NMS_KERNEL_SOURCE.parent / "nms_host_harness.cpp"
    _run_ok(
        [
            gxx,
            "-std=c++20",
            "-O1",
            "-pthread",
            "-ffp-contract=off",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(src),
            "-o",
            str(exe),
        ]
    )
    return exe


def run_harness(exe: Path, work: Path, cand, iou: float, max_output: int):
    work.mkdir(parents=True, exist_ok=True)
    b, k = cand.num_images, cand.k
    (work / "params.txt").write_text(f"{b} {k} {max_output} {iou!r}")
    cand.boxes.numpy().astype(np.float32).tofile(work / "boxes.f32")
    cand.classes.numpy().astype(np.int32).tofile(work / "classes.i32")
    cand.counts.numpy().astype(np.int32).tofile(work / "counts.i32")
    cand.order.numpy().astype(np.int64).tofile(work / "order.i64")
    _run_ok([str(exe), str(work)])
    col_blocks = (k + 63) // 64
    mask = np.fromfile(work / "mask.u64", np.uint64).reshape(b, k, col_blocks)
    keep = np.fromfile(work / "keep.i64", np.int64).reshape(b, max_output)
    num_kept = np.fromfile(work / "num_kept.i32", np.int32)
    return mask, keep, num_kept


@pytest.mark.parametrize(
    ("seed", "iou", "score_threshold", "max_output"), [(0, 0.5, None, None), (1, 0.3, 0.2, 25)]
)
def test_kernel_source_run_on_cpu_matches_emulation_and_torchvision(
    host_harness, tmp_path, seed, iou, score_threshold, max_output
):
    from engines.cuda.nms_emulation import mask_kernel

    rng = np.random.default_rng(seed)
    boxes, scores, classes = clustered_detections(rng, batch=2, n=200, num_classes=3)
    cand = prepare_candidates(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), score_threshold
    )
    cap = max_output or cand.k
    mask, keep, num_kept = run_harness(host_harness, tmp_path, cand, iou, cap)
    want_mask = mask_kernel(cand.boxes.numpy(), cand.classes.numpy(), cand.counts.numpy(), iou)
    for b, n in enumerate(cand.counts.tolist()):
        np.testing.assert_array_equal(mask[b, :n], want_mask[b, :n], err_msg=f"mask words of image {b}")
        assert (keep[b, num_kept[b] :] == -1).all()  # padding written by the kernel
    got = [keep[b, : num_kept[b]] for b in range(2)]
    assert_same(
        got, reference(boxes, scores, classes, iou, score_threshold=score_threshold, max_output=max_output)
    )


# ---- the algorithm, emulated in NumPy (no GPU needed) ----


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emulated_kernel_matches_torchvision_on_clustered_boxes(seed):
    rng = np.random.default_rng(seed)
    boxes, scores, classes = clustered_detections(rng, batch=3, n=260, num_classes=3)
    for iou in (0.3, 0.5, 0.7):
        want = reference(boxes, scores, classes, iou)
        got = emulate(boxes, scores, classes, iou)
        assert_same(got, want)
        # suppression really happened, so the test can tell a broken mask from a no-op
        assert all(len(g) < boxes.shape[1] * 0.8 for g in got)


def test_emulated_kernel_with_score_threshold_top_k_and_max_output():
    rng = np.random.default_rng(7)
    boxes, scores, classes = clustered_detections(rng, batch=2, n=400, num_classes=5)
    want = reference(boxes, scores, classes, 0.45, score_threshold=0.3, top_k=150, max_output=20)
    got = emulate(boxes, scores, classes, 0.45, score_threshold=0.3, top_k=150, max_output=20)
    assert_same(got, want)
    assert all(len(g) == 20 for g in got)
    for b, g in enumerate(got):
        assert (scores[b, g] >= 0.3).all()


def test_ties_are_broken_by_lower_index():
    # three identical boxes with equal scores: the first one wins and suppresses the other two
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[0.5, 0.9, 0.9, 0.9]], np.float32)
    classes = np.zeros((1, 4), np.int32)
    got = emulate(boxes, scores, classes, 0.5)
    np.testing.assert_array_equal(got[0], [1, 3])
    assert_same(got, reference(boxes, scores, classes, 0.5))


def test_classes_never_suppress_each_other_and_degenerate_boxes():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    classes = np.array([[0, 1, 2, 2]], np.int32)
    got = emulate(boxes, scores, classes, 0.5)
    # zero-area boxes have IoU 0/0 = NaN, which never exceeds the threshold (torchvision agrees)
    np.testing.assert_array_equal(got[0], [0, 1, 2, 3])
    assert_same(got, reference(boxes, scores, classes, 0.5))


def test_tiles_across_64_box_boundaries():
    # 200 copies of nearly the same box: only the best survives; its suppression must cross tile borders
    rng = np.random.default_rng(3)
    base = np.array([100, 100, 200, 200], np.float32)
    boxes = (base + rng.uniform(-1, 1, (1, 200, 4))).astype(np.float32)
    scores = rng.random((1, 200)).astype(np.float32)
    classes = np.zeros((1, 200), np.int32)
    got = emulate(boxes, scores, classes, 0.5)
    assert got[0].tolist() == [int(np.argmax(scores[0]))]


def test_prepare_candidates_flat_input_maps_back_to_rows():
    rng = np.random.default_rng(11)
    boxes, scores, classes = clustered_detections(rng, batch=3, n=90, num_classes=2)
    counts = [90, 10, 55]  # images of different sizes, rows interleaved in the flat arrays
    rows = [(b, i) for b in range(3) for i in range(counts[b])]
    perm = rng.permutation(len(rows))
    flat_b = np.array([rows[p][0] for p in perm])
    flat_i = np.array([rows[p][1] for p in perm])
    fb, fs, fc = boxes[flat_b, flat_i], scores[flat_b, flat_i], classes[flat_b, flat_i]
    cand = prepare_candidates(
        torch.from_numpy(fb), torch.from_numpy(fs), torch.from_numpy(fc), batch_idx=torch.from_numpy(flat_b)
    )
    assert cand.counts.tolist() == counts
    got = emulate_batched_nms(
        cand.boxes.numpy(), cand.classes.numpy(), cand.counts.numpy(), cand.order.numpy(), 0.5
    )
    idxs = torch.from_numpy(flat_b * 10 + fc)
    want = tv_batched_nms(torch.from_numpy(fb), torch.from_numpy(fs), idxs, 0.5).numpy()
    assert sorted(np.concatenate(got).tolist()) == sorted(want.tolist())
    for b, g in enumerate(got):
        assert (flat_b[g] == b).all()


def test_prepare_candidates_handles_empty_and_all_filtered():
    boxes = torch.zeros((2, 5, 4))
    scores = torch.full((2, 5), 0.1)
    cand = prepare_candidates(boxes, scores, None, score_threshold=0.5)
    assert cand.counts.tolist() == [0, 0]
    got = emulate_batched_nms(
        cand.boxes.numpy(), cand.classes.numpy(), cand.counts.numpy(), cand.order.numpy(), 0.5
    )
    assert [g.size for g in got] == [0, 0]


@pytest.mark.skipif(
    not (SHARED / "weights" / "yolox_nano.onnx").is_file(), reason="needs ../shared/data (YOLOX-Nano + COCO)"
)
def test_emulated_kernel_matches_torchvision_on_real_yolox_candidates():
    boxes, scores, classes = yolox_candidates(2)
    assert boxes.shape[1] > 500
    want = reference(boxes, scores, classes, 0.45, score_threshold=0.01)
    got = emulate(boxes, scores, classes, 0.45, score_threshold=0.01)
    assert_same(got, want)


def yolox_candidates(num_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-NMS candidates of the real YOLOX-Nano model on real COCO images (padded to one length)."""
    from PIL import Image

    from engines.onnx_engine import OnnxRuntimeEngine
    from pipeline.detect.detectors.yolo_decode import to_rows

    engine = OnnxRuntimeEngine(SHARED / "weights" / "yolox_nano.onnx", threads=1)
    images = sorted((SHARED / "coco_subset" / "images").glob("*.jpg"))[:num_images]
    out_b, out_s, out_c = [], [], []
    for path in images:
        rgb = np.asarray(Image.open(path).convert("RGB").resize((416, 416)), np.float32)
        blob = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)[None])
        raw = engine.run({engine.input_names[0]: blob})[engine.output_names[0]]
        cxcywh, cls_scores = to_rows(raw[0], "yolox", (416, 416))
        c = cls_scores.argmax(1)
        s = cls_scores[np.arange(len(c)), c]
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        out_b.append(xyxy.astype(np.float32))
        out_s.append(s.astype(np.float32))
        out_c.append(c.astype(np.int32))
    return np.stack(out_b), np.stack(out_s), np.stack(out_c)


# ---- argument checks (no GPU needed) ----


def test_cpu_tensors_are_refused_with_a_clear_error():
    with pytest.raises(EngineError, match="not a CUDA device.*pipeline.core.nms"):
        batched_nms_cuda(torch.zeros((1, 3, 4)), torch.zeros((1, 3)), iou_threshold=0.5)


@pytest.mark.parametrize(
    ("boxes", "scores", "kwargs", "match"),
    [
        (torch.zeros((1, 3, 5)), torch.zeros((1, 3)), {}, r"boxes must be"),
        (torch.zeros((1, 3, 4)), torch.zeros((1, 4)), {}, r"scores shape"),
        (torch.zeros((1, 3, 4)), torch.zeros((1, 3)), {"iou_threshold": 1.5}, r"iou_threshold"),
        (torch.zeros((1, 3, 4)), torch.zeros((1, 3)), {"top_k": 0}, r"top_k"),
        (torch.zeros((3, 4)), torch.zeros(3), {"batch_idx": torch.zeros(2, dtype=torch.long)}, r"batch_idx"),
    ],
)
def test_bad_arguments_name_the_problem(boxes, scores, kwargs, match):
    with pytest.raises(EngineError, match=match):
        batched_nms_cuda(boxes, scores, **kwargs)


# ---- the real kernel (GPU only) ----


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("batch", "n"), [(1, 1000), (16, 3000), (4, 20000)])
def test_cuda_kernel_matches_torchvision(batch, n):
    rng = np.random.default_rng(batch * 7 + n)
    boxes, scores, classes = clustered_detections(rng, batch=batch, n=n, num_classes=8)
    dev = torch.device("cuda")
    out = batched_nms_cuda(
        torch.from_numpy(boxes).to(dev),
        torch.from_numpy(scores).to(dev),
        torch.from_numpy(classes).to(dev),
        0.5,
    )
    assert out.keep.device.type == "cuda" and out.num_kept.device.type == "cuda"
    assert_same(out.to_lists(), reference(boxes, scores, classes, 0.5))


@pytest.mark.gpu
@needs_gpu
def test_cuda_kernel_flat_input_threshold_topk_maxout():
    rng = np.random.default_rng(5)
    boxes, scores, classes = clustered_detections(rng, batch=4, n=2000, num_classes=6)
    want = reference(boxes, scores, classes, 0.45, score_threshold=0.2, top_k=1000, max_output=100)
    dev = torch.device("cuda")
    b_idx = np.repeat(np.arange(4), 2000)
    out = batched_nms_cuda(
        torch.from_numpy(boxes.reshape(-1, 4)).to(dev),
        torch.from_numpy(scores.reshape(-1)).to(dev),
        torch.from_numpy(classes.reshape(-1)).to(dev),
        0.45,
        score_threshold=0.2,
        top_k=1000,
        max_output=100,
        batch_idx=torch.from_numpy(b_idx).to(dev),
    )
    got = [g - b * 2000 for b, g in enumerate(out.to_lists())]  # flat rows -> per-image positions
    assert_same(got, want)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(
    not (SHARED / "weights" / "yolox_nano.onnx").is_file(), reason="needs ../shared/data (YOLOX-Nano + COCO)"
)
def test_cuda_kernel_matches_torchvision_on_real_yolox_candidates():
    boxes, scores, classes = yolox_candidates(4)
    dev = torch.device("cuda")
    out = batched_nms_cuda(
        torch.from_numpy(boxes).to(dev),
        torch.from_numpy(scores).to(dev),
        torch.from_numpy(classes).to(dev),
        0.45,
        score_threshold=0.01,
    )
    assert_same(out.to_lists(), reference(boxes, scores, classes, 0.45, score_threshold=0.01))


@pytest.mark.gpu
@needs_gpu
def test_cuda_kernel_runs_on_a_side_stream_and_other_thread():
    import threading

    rng = np.random.default_rng(9)
    boxes, scores, classes = clustered_detections(rng, batch=2, n=500)
    want = reference(boxes, scores, classes, 0.5)
    results = {}

    def work():
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            dev = torch.device("cuda")
            out = batched_nms_cuda(
                torch.from_numpy(boxes).to(dev),
                torch.from_numpy(scores).to(dev),
                torch.from_numpy(classes).to(dev),
                0.5,
            )
            stream.synchronize()
            results["got"] = out.to_lists()

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    assert_same(results["got"], want)


def test_mask_memory_limit_is_checked_before_launch():
    from engines.cuda_nms import nms_on_candidates

    rng = np.random.default_rng(0)
    boxes, scores, classes = clustered_detections(rng, batch=2, n=1000)
    cand = prepare_candidates(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes))
    # 2 images x 1000 candidates x 16 words x 8 bytes = 256,000 bytes
    with pytest.raises(EngineError, match=r"2 images x 1000 candidates.*lower top_k"):
        nms_on_candidates(cand, 0.5, max_mask_bytes=200_000)
    empty = prepare_candidates(torch.zeros((2, 0, 4)), torch.zeros((2, 0)))
    out = nms_on_candidates(empty, 0.5, max_output=3)  # nothing to launch: no GPU needed
    assert out.keep.tolist() == [[-1, -1, -1]] * 2 and out.num_kept.tolist() == [0, 0]


def test_compiling_leaves_python_bytes_singletons_intact():
    """NVRTC writes its log and CUBIN into buffers we hand it; they must be private, writable ones. (A 1-byte
    log once went into CPython's shared b" " object and broke every later torch.load in the process.)"""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (installed with CUDA torch) is missing")
    import pickle

    from engines.cuda.runtime import compile_cubin

    compile_cubin(NMS_KERNEL_SOURCE, "sm_90")
    space = b" "  # the shared one-byte object (not constant-folded, unlike b" "[0])
    assert repr(space) == "b' '", f"the shared one-byte bytes object was overwritten: {space!r}"
    assert pickle.loads(pickle.dumps({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
    from engines.model_store import get_model_path

    state = torch.load(str(get_model_path("mtcnn", "pnet")), map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state
