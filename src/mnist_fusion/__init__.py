"""mnist_fusion: multi-input PyTorch models that fuse an image with side inputs."""

__version__ = "0.1.0"

__all__ = ["__version__"]
