"""The GPU check (``benchmarks/gpu_check.sh``, ``make bench-gpu``): real-size random-weight models, served."""
