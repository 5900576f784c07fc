"""Gate 1: what the snapshot holds, decided from its values, as an executable plan."""
