"""`larp demo`: the whole method on the built-in synthetic dataset (`pipeline`), and its report (`report`)."""
