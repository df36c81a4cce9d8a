"""Evaluation: FVD (I3D detector, feature statistics, Fréchet distance), reconstruction metrics, protocols."""
