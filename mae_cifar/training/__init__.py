"""The training loop, run folders, recipes, flags and the classifier's building blocks."""
