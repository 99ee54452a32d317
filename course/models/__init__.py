"""Small models the days train: the tiny transformer of day03 and the hybrid of day10."""
