"""absl entry points: run a study, write its report."""
