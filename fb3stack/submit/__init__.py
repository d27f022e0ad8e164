"""Offline submission: predict a test CSV from saved fold models and a fitted blend, bundle for Kaggle."""
