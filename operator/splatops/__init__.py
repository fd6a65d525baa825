"""splatops: train 3D Gaussian Splatting models on Kubernetes.

Keep this file free of imports: the trainer image imports `splatops.contract` alone.
"""

__version__ = "0.1.0"
