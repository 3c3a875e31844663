"""The domain: called by api/ and workers/ alike, never importing either."""
