"""Shared helpers of the benchmarks under bench/: timing, sizes and result files."""
