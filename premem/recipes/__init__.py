"""Recipes: whole jobs composed from the library (each a config dataclass and one function)."""
