"""`mmadapt eval`: task kinds, the one copy of the metric code, batched scoring, cached side-by-side reports."""
