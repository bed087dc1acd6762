"""Face embeddings: 5-point alignment + dlib's ResNet (ported to PyTorch), 128-d, Euclidean distance.

Two faces are the same person when the distance between their embeddings is below about 0.6 (dlib's
convention). Every embedding should be stored with ``model_id``: embeddings of different models (or of a
different weights file) are not comparable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.models.align import CHIP_PADDING, CHIP_SIZE, align_faces
from pipeline.models.dlib_resnet import EMBEDDING_DIM, DlibFaceResNet

BACKENDS = ("torch", "onnxruntime")


class FaceEmbedder:
    """Aligns faces and embeds them in batches.

    ``backend``: "torch" (CPU or CUDA; channels-last, affine layers folded into the convolutions) or
    "onnxruntime" (CPU; the same module exported to ONNX once and cached under the model cache; its input
    "chips" is (N, 3, 150, 150) float RGB 0..255, output "embeddings" (N, 128)). ``model_path``: the dlib
    ``.dat`` file; default: the model store's ``dlib-face-resnet`` files. ``max_batch`` bounds the faces per
    forward pass (memory). ``threads`` sets the intra-op threads (for torch this is process-wide).
    """

    def __init__(
        self,
        backend: str = "torch",
        device: str = "cpu",
        model_path: str | Path | None = None,
        max_batch: int = 32,
        threads: int | None = None,
        template: str = "mtcnn",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"FaceEmbedder backend must be one of {BACKENDS}, got {backend!r}")
        if max_batch < 1:
            raise ValueError(f"FaceEmbedder max_batch must be >= 1, got {max_batch}")
        if model_path is None:
            from engines.model_store import get_model_path

            model_path = get_model_path("dlib-face-resnet", "embedding")
        module = DlibFaceResNet.from_file(model_path)
        self.model_id = f"dlib-resnet-v1:{module.source_sha256[:8]}"
        self.backend = backend
        self.device = device
        self.max_batch = int(max_batch)
        self.template = template
        self._engine = None
        if backend == "torch":
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"FaceEmbedder: device {device!r} requested but CUDA is not available")
            if threads:
                torch.set_num_threads(int(threads))
            self._module = module.to(device).to(memory_format=torch.channels_last).eval()
        else:
            from engines.export import export_onnx
            from engines.onnx_engine import OnnxRuntimeEngine

            onnx_path = export_onnx(
                module,
                (1, 3, CHIP_SIZE, CHIP_SIZE),
                name="dlib-face-resnet-v1",  # cache key: hash of the folded weights + input shape
                input_names=("chips",),
                output_names=("embeddings",),
            )
            self._engine = OnnxRuntimeEngine(onnx_path, threads=threads, device=device)
            self._module = None

    def embed(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Embeddings (N, 128) float32 of the faces with 5 points ``landmarks`` (N, 5, 2) in a BGR image."""
        lm = np.asarray(landmarks, np.float32)
        if lm.ndim != 3 or lm.shape[1:] != (5, 2):
            raise ValueError(f"landmarks must have shape (N, 5, 2), got {lm.shape}")
        if len(lm) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        chips = align_faces(
            image_bgr, lm, template=self.template, size=CHIP_SIZE, padding=CHIP_PADDING, bgr_to_rgb=True
        )
        return self.embed_chips(chips)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings (N, 128) float32 of aligned RGB uint8 chips (N, 150, 150, 3)."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must have shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
        if chips.dtype != np.uint8:
            raise ValueError(f"chips must be uint8 RGB, got dtype {chips.dtype}")
        out = np.empty((len(chips), EMBEDDING_DIM), np.float32)
        for start in range(0, len(chips), self.max_batch):
            part = np.ascontiguousarray(chips[start : start + self.max_batch])
            out[start : start + len(part)] = self._forward(part)
        return out

    def _forward(self, chips: np.ndarray) -> np.ndarray:
        if self._engine is not None:
            x = chips.transpose(0, 3, 1, 2).astype(np.float32)
            return self._engine.run({"chips": x})["embeddings"]
        # NHWC uint8 viewed as NCHW is already channels-last; .float() keeps that layout.
        x = torch.from_numpy(chips).to(self.device).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            return self._module(x).float().cpu().numpy()

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean distance along the last axis (dlib's convention; same person below ~0.6)."""
        return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
