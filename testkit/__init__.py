"""What the tests and the benchmarks share: generators of pictures and other test inputs. Not shipped in the
images (pyproject's package list and .dockerignore leave it out)."""
