"""Example models and the embedded demo (a small residual CNN trained on scikit-learn's digits)."""
