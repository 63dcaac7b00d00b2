"""The marker of the CPU emulation tests of the CUDA kernels (``-m cuda_host`` selects them)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda_host: runs the CUDA kernels on the CPU (tests/kernels/cuda_host)")
