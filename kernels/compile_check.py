"""Ahead-of-time GPU compile check of every kernel launch configuration; needs no GPU.

Compiles each variant that ``compile_variants()`` of tscd.kernels.gaussian, .scd and .varm lists
with Triton for sm_80 and sm_90 (the ptxas the triton wheel ships), and each ``*_cuda.cu`` of the
native sources (:func:`tscd.kernels.extension.source_dir`, the checkout's ``csrc/``) with nvcc
and the library's flags to one cubin per architecture (skipped, saying so, without nvcc).
``cuobjdump -res-usage`` gives each kernel's registers, spills (stack frame + local memory) and
static shared memory (plus Triton's dynamic shared memory); tensor-core instructions
are counted in the PTX (Triton: ``mma.sync``, ``wgmma.mma_async``) or the SASS (CUDA: HMMA,
HGMMA). Prints a summary per kernel and target; ``--out`` also writes every row as CSV.

Exits 1 on a compile error, a spill, or shared memory above the target's per-block limit.
The CUDA kernels' dynamic shared memory is a launch argument, checked by their wrappers.

    python -m tscd.kernels.compile_check [--kernels gaussian,scd,varm] [--no-cuda] [--jobs 2] [--out rows.csv]
"""
from __future__ import annotations

import argparse
import csv
import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not for the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .extension import NVCC_FLAGS, source_dir  # noqa: E402

FIELDS = ("kernel", "config", "target", "registers", "spill_bytes", "shared_bytes", "tensor_core_instructions")
KERNEL_MODULES = ("gaussian", "scd", "varm")
#: Compute capability and shared memory a block may use, per target.
TARGETS = {"sm_80": (80, 166912), "sm_90": (90, 232448)}
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_RES_USAGE = re.compile(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _res_usage(cubin: Path) -> list[tuple[str, int, int, int]]:
    """(mangled name, registers, spill bytes, static shared bytes) of each kernel in ``cubin``."""
    text = subprocess.run([NVIDIA_BIN / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True,
                          check=True).stdout
    return [(name, int(reg), int(stack) + int(local), int(shared))
            for name, reg, stack, shared, local in _RES_USAGE.findall(text)]


def _compile_triton(module: str, index: int, target: str) -> list[dict]:
    """The row of variant ``index`` of ``tscd.kernels.<module>.compile_variants()`` on ``target``."""
    variant = importlib.import_module(f"tscd.kernels.{module}").compile_variants()[index]
    kernel = variant.kernel
    constexprs = {(kernel.arg_names.index(name),): value for name, value in variant.constexprs.items()}
    compiled = triton.compile(ASTSource(fn=kernel, signature=variant.signature, constexprs=constexprs),
                              target=GPUTarget("cuda", TARGETS[target][0], 32), options=variant.options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        ((_, registers, spill, shared),) = _res_usage(cubin)
    mma = len(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)\b", compiled.asm["ptx"]))
    return [dict(kernel=kernel.fn.__name__, config=variant.label, target=target, registers=registers,
                 spill_bytes=spill, shared_bytes=shared + compiled.metadata.shared, tensor_core_instructions=mma)]


def _demangled(names: list[str]) -> dict[str, tuple[str, str]]:
    """mangled -> (function name, template arguments or ""), by c++filt where installed."""
    filt = shutil.which("c++filt")
    plain = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True,
                           check=True).stdout.split("\n") if filt else names
    result = {}
    for mangled, name in zip(names, plain):
        match = re.search(r"(\w+)(<[^(]*>)?\(", name)
        result[mangled] = (match[1], match[2] or "") if match else (mangled, "")
    return result


def _find_nvcc() -> str | None:
    """nvcc on the PATH, else under $CUDA_HOME (default /usr/local/cuda), else None."""
    candidate = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    return shutil.which("nvcc") or (str(candidate) if candidate.exists() else None)


def _nvcc_command(nvcc: str, source: Path, arch: int, cubin: Path) -> list[str]:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    includes = [f"-I{p}" for p in include_paths("cuda") + [str(source.parent)]]
    return [nvcc, "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, "-std=c++20", *COMMON_NVCC_FLAGS,
            *includes, str(source), "-o", str(cubin)]


def _nvcc_environment() -> dict:
    """The environment with CPATH extended by the CUDA headers of the torch wheel's nvidia packages
    (ATen's CUDA headers include cusparse.h & co., which a bare toolkit may lack)."""
    import nvidia

    headers = [p for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "cu*", "include"))]
    return dict(os.environ, CPATH=os.pathsep.join(headers + [os.environ.get("CPATH", "")]).rstrip(os.pathsep))


def _compile_cuda(nvcc: str, source: str, target: str) -> list[dict]:
    """One row per ``__global__`` function of the CUDA source on ``target``."""
    source = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernels.cubin"
        done = subprocess.run(_nvcc_command(nvcc, source, TARGETS[target][0], cubin), capture_output=True, text=True,
                              env=_nvcc_environment())
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        usage = _res_usage(cubin)
        sass = subprocess.run([NVIDIA_BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    per_function = {m[1]: m[2] for m in re.finditer(r"Function : (\S+)(.*?)(?=Function : |\Z)", sass, re.S)}
    names = _demangled([name for name, *_ in usage])
    rows = []
    for mangled, registers, spill, shared in usage:
        name, template = names[mangled]
        mma = len(re.findall(r"\b(?:HMMA|HGMMA)\b", per_function.get(mangled, "")))
        rows.append(dict(kernel=name, config=f"{source.name}{template}", target=target, registers=registers,
                         spill_bytes=spill, shared_bytes=shared, tensor_core_instructions=mma))
    return rows


def _triton_tasks(modules) -> tuple[list[tuple], list[str]]:
    """(module, index) of each distinct variant (same kernel, signature, constexprs and options
    once), and the modules that list none."""
    tasks, seen, problems = [], set(), []
    for module in modules:
        list_variants = getattr(importlib.import_module(f"tscd.kernels.{module}"), "compile_variants", None)
        if list_variants is None:
            problems.append(f"tscd.kernels.{module} has no compile_variants()")
            continue
        for index, v in enumerate(list_variants()):
            key = (v.kernel.fn.__name__, *(tuple(sorted(d.items())) for d in (v.signature, v.constexprs, v.options)))
            if key not in seen:
                seen.add(key)
                tasks.append((module, index))
    return tasks, problems


def _problems(row: dict) -> list[str]:
    where = f"{row['kernel']} [{row['config']}] on {row['target']}"
    limit = TARGETS[row["target"]][1]
    problems = [f"{where}: spills {row['spill_bytes']} B"] if row["spill_bytes"] else []
    if row["shared_bytes"] > limit:
        problems.append(f"{where}: {row['shared_bytes']} B shared memory > {limit} B")
    return problems


def _summary(rows: list[dict]) -> None:
    groups = defaultdict(list)
    for row in rows:
        groups[row["kernel"], row["target"]].append(row)
    print(f"| kernel | target | variants | registers | spill B | shared B | tensor-core instr. |\n{'|---' * 7}|")
    for (kernel, target), group in groups.items():
        def span(field):
            low, high = min(r[field] for r in group), max(r[field] for r in group)
            return str(low) if low == high else f"{low}–{high}"
        print(f"| {kernel} | {target} | {len(group)} | {span('registers')} | {span('spill_bytes')} | "
              f"{span('shared_bytes')} | {span('tensor_core_instructions')} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default=",".join(KERNEL_MODULES),
                        help="comma-separated modules of tscd.kernels whose compile_variants() to compile")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA extension's kernels")
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes")
    parser.add_argument("--out", type=Path, default=None, help="write every row to this CSV file")
    args = parser.parse_args()
    modules = [m for m in args.kernels.split(",") if m]
    unknown = set(modules) - set(KERNEL_MODULES)
    if unknown:
        parser.error(f"--kernels: unknown {sorted(unknown)}, choose from {KERNEL_MODULES}")

    start = time.perf_counter()
    jobs = []  # (what, function, arguments); the slow nvcc runs first
    nvcc = None if args.no_cuda else _find_nvcc()
    if nvcc is None:
        print("CUDA kernels skipped: " + ("--no-cuda" if args.no_cuda else "nvcc not found"))
    else:
        for source in sorted(source_dir().glob("*_cuda.cu")):
            jobs += [(f"{Path(source).name} on {t}", _compile_cuda, (nvcc, source, t)) for t in TARGETS]
    tasks, problems = _triton_tasks(modules)
    jobs += [(f"{m} variant {i} on {t}", _compile_triton, (m, i, t)) for m, i in tasks for t in TARGETS]

    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [(what, pool.submit(fn, *fn_args)) for what, fn, fn_args in jobs]
        for what, future in futures:
            try:
                rows += future.result()
            except Exception as error:  # noqa: BLE001 - report every failing compile, then fail
                problems.append(f"{what}: compile error: {error}")
    for row in rows:
        problems += _problems(row)

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    _summary(rows)
    print(f"{len(rows)} rows ({len(tasks)} distinct Triton variants) in {time.perf_counter() - start:.0f} s"
          + (f" -> {args.out}" if args.out is not None else ""))
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
