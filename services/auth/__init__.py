"""Accounts and sign-in: tokens, passwords, one-time codes, outside providers."""
