"""Metered events: usage sent in batches by a seller's servers, each applied at most once."""
