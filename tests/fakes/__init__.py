"""Stand-ins for services tests cannot reach, built from the real protocols."""
