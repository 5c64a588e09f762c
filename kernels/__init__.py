"""Triton kernels of irt4: each file holds a kernel, its launcher, its autograd op and a PyTorch reference."""
