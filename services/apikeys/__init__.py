"""API keys: ``bk_`` secrets for a seller's servers, with scopes and spend limits."""
