"""Presentation: the run report, its charts, the terminal summary, pictures and the walk diagnosis."""
