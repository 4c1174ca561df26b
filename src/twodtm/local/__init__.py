"""The local search: particles in small boxes, around known poses."""
