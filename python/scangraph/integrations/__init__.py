"""Run other libraries' models on scangraph's kernels: `transformers` (HF Mamba and FalconMamba).
Each integration imports its library on use and raises a clear ImportError without it."""
