"""Benchmarks that print the figures the README quotes. Run each as `python bench/<name>.py --help`."""
