"""Adapters between lawn-monitor and other frameworks and trackers; each imports its framework lazily."""
