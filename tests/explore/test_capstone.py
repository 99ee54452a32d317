"""course.explore.capstone: the memory explorer draws the estimates and shows the choice."""

from course.explore.capstone import MemoryExplorer
from course.reference.capstone import choose_attention, estimate_attention_memory


def test_explorer_renders_a_png_and_shows_the_choice():
    explorer = MemoryExplorer(estimate_attention_memory, choose_attention)
    assert explorer.render()[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.choice() == "flash"  # L = 4096, 8 heads, 1 GiB, CPU: dense needs 4 GiB
    explorer.log2_len.value = 8
    assert explorer.choice() == "dense"
    explorer.needs_global.value, explorer.log2_len.value = False, 15
    assert explorer.choice() == "sliding"
    stats = explorer.stats()
    assert stats["choice"] == "sliding" and stats["dense"].endswith(" MiB")
    before = bytes(explorer.image.value)
    explorer.heads.value = 4
    assert bytes(explorer.image.value) != before
