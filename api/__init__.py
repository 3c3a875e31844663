"""HTTP only: routing, validation, auth dependencies, error mapping."""
