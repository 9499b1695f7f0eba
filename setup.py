"""fedsim: a Ray-based simulator of federated fine-tuning of large language models."""

from setuptools import find_packages, setup

setup(
    name="fedsim",
    version="0.1.0",
    description="Simulate federated fine-tuning of LLMs (LoRA/PEFT) at scale on Ray",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fedsim", "fedsim.*"]),
    package_data={"fedsim.catalog": ["*.yaml", "*.json"]},
    install_requires=[
        # torch first and pinned by the Makefile (CPU build); any 2.x that satisfies this is fine.
        "torch>=2.4",
        "ray[default,tune]>=2.40",
        "transformers>=4.46",
        "peft>=0.13",
        "deepspeed>=0.15",
        "datasets>=3.0",
        "tokenizers>=0.20",
        "numpy>=1.26",
        "tensorboard>=2.15",
        "pyyaml>=6",
        "pyarrow>=15",
        "pandas>=2",
        "matplotlib>=3.8",
        "pydantic>=2.6",
        "rich>=13",
        "filelock>=3.12",
        "psutil>=5.9",
        "safetensors>=0.4",
        "optuna>=4",  # `search: optuna` in a sweep: Optuna's TPE through Ray Tune's OptunaSearch (the issue asks for it)
        "dp-accounting>=0.4,<0.7",  # DP epsilon (fedsim.strategies.privacy): pure SciPy; reads its RDP curve
    ],
    # gpu: a quantized (NF4/int8, QLoRA) base on CUDA workers (runtime.base_quantization); CUDA-only wheels
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100"], "gpu": ["bitsandbytes>=0.43"]},
    entry_points={"console_scripts": ["fedsim=fedsim.cli:entry"]},
)
