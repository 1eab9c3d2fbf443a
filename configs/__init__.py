"""ml_collections get_config() files, one per task."""
