"""The web page and the REST API, as a service of its own in front of the gRPC service: `python -m inference.web`.

app.py (the gateway and its routes), schemas.py (the JSON shapes), errors.py (gRPC status -> HTTP), probe.py (the
container's health check), static/ (the page: plain HTML, JS and CSS, no build step).
"""
