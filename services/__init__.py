"""Visual product search: inference tier tooling, search service and importer."""
