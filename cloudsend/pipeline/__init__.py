"""Orchestration of the run phases; see session.Session."""
