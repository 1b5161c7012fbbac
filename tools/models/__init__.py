"""Model export, preparation and Triton model-repository rendering."""
