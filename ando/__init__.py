"""Ando: an API gateway for the edge that speaks Apache APISIX's configuration language."""

__version__ = "0.1.0"
