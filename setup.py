"""odyssey: LSTM: A Search Space Odyssey, reproduced in JAX with many trials at once."""

from setuptools import find_packages, setup

setup(
    name="odyssey",
    version="0.1.0",
    description="The nine LSTM variants of Greff et al. (2017), trained as vmapped random-search trials in JAX.",
    python_requires=">=3.11",
    packages=find_packages(include=["odyssey", "odyssey.*"]),
    install_requires=[
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "chex",
        "ml-collections",
        "absl-py",
        # analysis and report
        "scipy",
        "scikit-learn",
        "matplotlib",
        # edit distance for the character error rate: C++, ~150x a Python dynamic programme
        "rapidfuzz",
        # offline stand-in data
        "music21",
        "espeakng-loader",
        "Hershey-Fonts",
    ],
    extras_require={
        # python_speech_features is only the independent MFCC oracle of the tests; pytest-xdist runs the
        # suite's files on up to 4 cores (setup.cfg), as its time is mostly single-threaded XLA compiling.
        "test": ["pytest", "pytest-xdist>=3", "python_speech_features"],
        # A CPU build of torch that installs quickly; an unpinned torch pulls a GPU build.
        "bench": ["torch==2.13.0"],
    },
)
