"""fastwsss: weakly-supervised semantic segmentation with causal intervention, fused kernels and export."""

__version__ = "0.1.0"
