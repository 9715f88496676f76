"""fairseq_lite: fairseq's wav2vec family (wav2vec, vq-wav2vec, wav2vec 2.0, CTC) for current Python and PyTorch."""

from setuptools import find_packages, setup

setup(
    name="fairseq_lite",
    version="0.1.0",
    description="fairseq's wav2vec family, rebuilt for current Python and PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fairseq_lite", "fairseq_lite.*"]),
    package_data={"fairseq_lite": ["config/model/*/*.yaml", "interop/*.json", "recipes/cards/*.yaml"]},
    install_requires=[
        "torch>=2.4",  # fused CPU AdamW; tested with 2.9 (torch-xla) and 2.13
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.2,<2.4",
        "numpy>=1.23",
        "soundfile>=0.12",
        "soxr>=0.3",
        "editdistance>=0.6",
        "tqdm>=4.60",
    ],
    extras_require={
        "decode": ["flashlight-text>=0.0.7", "kenlm"],
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
        "xla": ["torch-xla"],
        "audio": ["av>=12"],
        "bench": ["pyctcdecode>=0.5"],
        "hubert": ["scikit-learn>=1.2", "joblib>=1.2"],  # k-means labels (examples/hubert/simple_kmeans)
        "dev": ["av>=12", "tensorboard>=2.10", "pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "h5py>=3", "jiwer>=3", "scipy>=1.10", "matplotlib>=3.7",
                "kaldi-native-fbank>=1.18"],
    },
    entry_points={
        "console_scripts": [
            "fairseq-hydra-train = fairseq_lite.cli.hydra_train:cli_main",
            "fairseq-train = fairseq_lite.cli.train:cli_main",
            "fairseq-infer = fairseq_lite.cli.infer:cli_main",
            "fairseq-hydra-infer = fairseq_lite.cli.hydra_infer:cli_main",
        ]
    },
)
