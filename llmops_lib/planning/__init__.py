"""Planning: the model catalog, profiles, memory and cost estimates, finding model files."""
