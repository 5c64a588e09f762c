import os

# Triton kernels must run on the interpreter (no GPU here), and the flag is read when they are imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
