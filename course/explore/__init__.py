"""The interactive heatmap explorers, one module per day (named by its slug), the base class they
all share (`base.Explorer`: one display path, one redraw path, public `stats()`), the heatmap they
draw with (`heatmap`), and the gallery that puts them on one page (`gallery`)."""
