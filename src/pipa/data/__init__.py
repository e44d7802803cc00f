"""Data: the built-in synthetic benchmark, folder datasets, and writers."""
