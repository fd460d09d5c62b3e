"""Fused kernels (Triton, CUDA) with pure-PyTorch references; installed as fastwsss.kernels."""
