"""Ports: discovery of impls/*/port.toml, toolchain install and build, validation against the
reference core."""
