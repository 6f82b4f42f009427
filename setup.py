"""SelM-D2: SelM audio-visual segmentation as a detectron2 project."""
from setuptools import find_packages, setup

setup(
    name="selm_d2",
    version="0.1.0",
    description="SelM (selective-mechanism audio-visual segmentation) for detectron2",
    packages=find_packages(include=["selm_d2", "selm_d2.*"]),
    python_requires=">=3.8",
    install_requires=[
        # torch/torchvision are installed first by the Makefile (pinned pair that exists
        # offline here); a range here would let pip fetch a different build.
        "torch>=1.13",
        "torchvision",
        # detectron2 itself is installed by tools/install_detectron2.py (not on PyPI).
        # Pillow<10 while detectron2 v0.6 is installed: it evaluates Image.LINEAR at import.
        "Pillow<10",
        "numpy",
        "scipy",             # polyphase resampling of audio (INPUT.AVS.AUDIO.RESAMPLER)
        # AVSBench's VGGish front-end resamples with resampy: the default resampler, and the
        # source of the filter that the polyphase option applies (pulls in numba).
        "resampy>=0.4",
        "soundfile",         # wav/flac decoding
        "timm>=0.9",         # PVT-v2 backbones
        "opencv-python-headless",  # detectron2's Visualizer, demo video writing
        "fvcore",            # FLOP counting in tools/benchmark.py
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # CUDA-only fast path for the Mamba blocks of BCSM; needs nvcc and a GPU to build.
        "mamba": ["mamba-ssm>=1.2", "causal-conv1d>=1.2"],
        # The web demo (demo/app.py). gradio 6 accepts Pillow 9 (detectron2 v0.6 needs < 10);
        # imageio-ffmpeg bundles an ffmpeg binary: nothing is downloaded at run time.
        "app": ["gradio>=6.31,<7", "imageio-ffmpeg>=0.5"],
        # selenium drives the system Chromium in tests/test_app.py; einops is imported by the
        # SelM authors' code (and mamba-ssm's) that selm_d2/official_code.py builds for parity
        # tests; pytest-xdist runs the test files on two processes (`make test`).
        "dev": ["pytest>=7", "pytest-xdist>=3", "selenium>=4.11", "einops"],
    },
)
