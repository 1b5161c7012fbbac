"""Running and calling Triton Inference Server."""
