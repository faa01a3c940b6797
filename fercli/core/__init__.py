"""Infrastructure: configuration, errors, the work directory, the stage engine."""
