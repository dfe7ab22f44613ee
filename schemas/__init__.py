"""pydantic schemas: port manifests, benchmark matrices and result files."""
