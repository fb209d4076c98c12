"""Pretraining and fine-tuning recipes."""
