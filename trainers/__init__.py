"""Training entry points, models and data for lawn-monitor (see ``trainers.train``)."""
