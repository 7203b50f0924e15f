"""Stand-in for lie_learn, for running escnn's 2D groups under numpy 2 (see wigner_d.py)."""
