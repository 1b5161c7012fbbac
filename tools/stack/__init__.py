"""The local stack: Triton launcher, Milvus processes, the search service, the demo and its
catalog, test certificates."""
