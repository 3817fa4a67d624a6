"""kNN, tuned probes, features and reconstruction grids of a trained model."""
