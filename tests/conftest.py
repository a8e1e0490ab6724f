import os

# Multi-device tests spawn subprocesses with their own XLA_FLAGS; the main test process keeps one
# CPU device and a quiet log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
