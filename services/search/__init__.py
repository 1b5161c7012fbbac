"""The search service: SearchByImage and the catalog API over gRPC, on Triton and Milvus."""
