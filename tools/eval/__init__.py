"""The search-quality evaluation (`make eval`)."""
