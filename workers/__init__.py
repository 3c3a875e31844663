"""Celery only: the app, thin tasks and the beat schedule."""
