"""Task modules; each body loads by id, calls a service, commits."""
