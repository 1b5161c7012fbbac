"""Benchmarks: the pipeline (make bench), Milvus at scale, the write path, TLS; common.py holds what they share."""
