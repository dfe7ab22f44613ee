"""Containers: the Docker-API engine (Docker, or podman started on demand), image builds, and
runs of port commands inside an image."""
