"""Code shared by every Atomic Guide realtime service: schemas, subjects, auth, settings."""
