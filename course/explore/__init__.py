"""The interactive heatmap explorers, one module per day (named by its slug), the heatmap they
all draw with (`heatmap`), and the gallery that puts them on one page (`gallery`)."""
