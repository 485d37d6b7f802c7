"""Shared helpers: scheduler facts, seeding, prompt files, video writing."""
