from setuptools import find_packages, setup

setup(
    name="superrl-megatron",
    version="0.1.0",
    description="SuperRL hybrid RL + supervised post-training on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["superrl", "superrl.*", "megatron_patches", "megatron_patches.*"]),
    package_data={"superrl": ["data/fixtures/*.jsonl"]},
    install_requires=[
        # torch is deliberately unversioned beyond a floor: CPU installs pin it through
        # constraints.txt, GPU users keep their own CUDA build.
        "torch>=2.4",
        "megatron-core==0.16.1",
        "transformers>=5.16.1,<5.20",
        "safetensors",
        "omegaconf>=2.3",
        "datasets",
        "psutil",
        "tqdm",
        "tensorboard",
        "math-verify",
        "reasoning-gym",
        "matplotlib",
    ],
    extras_require={
        # Versions as in constraints-gpu.txt (why: its header); install with it, see README.
        "gpu": ["transformer-engine[core_cu13,pytorch]==2.11.0", "vllm==0.32.0"],
        # experiment tracking: trainer.loggers=[..., wandb]; in dev too, so the tests run it
        "tracking": ["wandb==0.31.0"],
        "dev": ["pytest", "pytest-timeout", "wandb==0.31.0"],
    },
    entry_points={
        "console_scripts": [
            "superrl-train=superrl.train:main",
            "superrl-eval=superrl.eval:main",
            "superrl-plot=superrl.plot:main",
        ]
    },
)
