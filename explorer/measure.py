"""Time the Attention Explorer's work in one process, as its kernel does it:

    .venv/bin/python explorer/measure.py

Prints wall and CPU seconds for: importing torch and the gallery, getting the trained model (cache
or training), the first section's first heatmap, and redraws of 64x64 maps after a control
change. CPU seconds hardly depend on how busy a shared machine is; wall seconds do, so the load
average is printed too. The browser's own view (command to first heatmap, redraws seen in the
page) is in test-artifacts/browser/timings.json after `pytest -m browser`.
"""

import os
import statistics
import time

START = (time.perf_counter(), time.process_time())


def since(mark):
    return time.perf_counter() - mark[0], time.process_time() - mark[1]


def now():
    return time.perf_counter(), time.process_time()


def report(name, wall_cpu):
    print(f"{name:48s} wall {wall_cpu[0]:6.2f} s   cpu {wall_cpu[1]:6.2f} s")


def redraws(control, values):
    walls, cpus = [], []
    for value in values:
        mark = now()
        control.value = value
        wall, cpu = since(mark)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def main():
    import torch

    torch.set_num_threads(1)
    from course.explore import gallery

    report("import torch + course.explore.gallery", since(START))
    mark = now()
    model = gallery.trained_model()
    report("trained model (cache, or training on a miss)", since(mark))
    mark = now()
    gallery.build_section(gallery.ENTRIES[0])
    report("first section built: first heatmap (grid)", since(mark))
    report("total: process start to first heatmap", since(START))

    from course.explore.heatmap import AttentionExplorer
    from course.explore.sparse import PatternExplorer

    pattern = PatternExplorer(length=64)
    report("redraw 64x64 pattern (window slider), median", redraws(pattern.window, [4, 5, 6, 7, 8]))
    weights = torch.softmax(torch.randn(4, 64, 64), dim=-1)
    attention = AttentionExplorer(weights)
    report("redraw 64x64 heatmap (head slider), median", redraws(attention.head, [1, 2, 3, 0, 1]))
    sentence = gallery.SentenceExplorer(model)
    sentence.heads.view.value = "single"
    report(
        "redraw one 17x17 head of the model, median", redraws(sentence.heads.head, [1, 2, 3, 0, 1])
    )
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
