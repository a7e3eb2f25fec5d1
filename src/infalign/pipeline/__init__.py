"""Stages of ``infalign-train``: world -> calibrate -> train -> evaluate -> record."""
