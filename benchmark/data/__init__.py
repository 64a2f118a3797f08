"""Data sources, phantom generator, splits, robust image reading and the decode cache."""
