"""Benchmarks that print the figures the README quotes. Run each from the repository root as
`python -m bench.<name>` (`--help` for its options)."""
