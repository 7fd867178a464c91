#!/usr/bin/env python3
"""Compile the device executor's CUDA kernels with NVRTC, as the executor does at start-up
(same source, same options: the device's virtual architecture, no toolkit headers), and write
the PTX. argv: kernels.cu, virtual arch (compute_90), output .ptx. Needs libnvrtc.so.13 on
LD_LIBRARY_PATH (pip's nvidia-cuda-nvrtc). Used by launch/build-cuda.sh and tests/gpu/run.sh."""

import ctypes
import sys

src_path, arch, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
nvrtc = ctypes.CDLL("libnvrtc.so.13")
prog = ctypes.c_void_p()
src = open(src_path, "rb").read()


def check(rc, what):
    if rc != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise SystemExit(f"NVRTC {what}: {nvrtc.nvrtcGetErrorString(rc).decode()}")


check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"dynamo_kernels.cu", 0, None, None),
      "create")
opts = [f"--gpu-architecture={arch}".encode()]
arr = (ctypes.c_char_p * len(opts))(*opts)
rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
if log.value.strip():
    print(log.value.decode(), file=sys.stderr)
check(rc, "compile")
nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
check(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
open(out_path, "wb").write(ptx.value)
kernels = [l.split()[-1].rstrip("(") for l in ptx.value.decode().splitlines()
           if l.startswith(".visible .entry")]
print(f"NVRTC: {len(kernels)} kernels for {arch}: {', '.join(kernels)}", file=sys.stderr)
