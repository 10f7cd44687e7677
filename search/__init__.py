"""Mixed-precision search: spaces, strategies, runners, study outputs."""
