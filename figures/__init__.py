"""Publication figures, one module per figure; ``python -m figures`` regenerates them."""
