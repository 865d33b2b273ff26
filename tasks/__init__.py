"""Objectives bbopt optimizes: synthetic benchmarks and hyperparameter-tuning tasks."""
