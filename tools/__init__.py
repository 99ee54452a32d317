"""Developer tools, outside the wheel: the adversarial corpus and the grading benchmark."""
