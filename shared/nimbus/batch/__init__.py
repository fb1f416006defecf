"""Batch predictions: read -> validate -> score with N registry models -> write -> report -> audit."""
