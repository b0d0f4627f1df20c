"""The deploy tests: containers, compose and the local stack. `pytest tests/deploy -q` runs them alone;
`-m "not e2e"` leaves out the one that starts the real services."""


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts the real trainer, inference service and TensorBoard (~1 min)")
    config.addinivalue_line("markers", "docker: builds the images and runs the stack with a real Docker engine")
