"""C++/CUDA sources of the tscd extension, shipped as package data (see tscd.ops._cpp)."""
