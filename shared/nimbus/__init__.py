"""Nimbus: stateless ML functions that run the same code on AWS Lambda, containers and one laptop."""

from __future__ import annotations

__version__ = "0.1.0"
