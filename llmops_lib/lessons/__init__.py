"""Lessons: `nbNN/` holds notebook NN's own code; a module here serves several notebooks."""
