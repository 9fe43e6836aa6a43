"""Foundation: errors, the chat contract, results files, hardware facts, shipped data."""
