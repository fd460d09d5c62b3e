"""Compile the Triton kernels of cam_norm and random_walk for sm_90 without a GPU (run by
tests/kernels/test_triton_compile.py in a fresh process: TRITON_INTERPRET must be 0 before the kernels are
defined). The interpreter runs Python that the compiler may reject (a builtin call, an unsupported keyword);
this catches that on the CPU. Prints one line per kernel."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastwsss.kernels import cam_norm as cn  # noqa: E402
from fastwsss.kernels import random_walk as rw  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, types: dict[str, str], constants: dict[str, object]) -> None:  # noqa: ANN001
    names = fn.arg_names
    signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in names}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constants.items()})
    triton.compile(source, target=TARGET)
    print(f"compiled {fn.__name__}", flush=True)


plane = {"PLANE_CONTIGUOUS": False, "ROWS": 2, "BLOCK": 1024}
compile_kernel(cn._cam_norm_fused_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "eps": "fp32"}, plane)
compile_kernel(cn._partial_max_kernel, {"x_ptr": "*fp16", "partial_ptr": "*fp32"}, plane)
compile_kernel(cn._cam_norm_scale_kernel,
               {"x_ptr": "*bf16", "partial_ptr": "*fp32", "out_ptr": "*bf16", "eps": "fp32"}, {**plane, "CHUNKS_BLOCK": 4})
compile_kernel(rw._taps_kernel,
               {"edge_ptr": "*fp32", "beta_ptr": "*fp32", "dir_ptr": "*i32", "path_ptr": "*i32", "w_ptr": "*fp32"},
               {"N_DIRS": 34, "PATH_LEN": 5, "BLOCK_D": 64, "BLOCK_P": 64})  # fmt: skip
compile_kernel(rw._step_kernel, {"src_ptr": "*fp32", "dst_ptr": "*fp32", "w_ptr": "*fp32", "off_ptr": "*i32"},
               {"N_TAPS": 69, "BLOCK_K": 8, "BLOCK_P": 128})
