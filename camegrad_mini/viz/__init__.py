"""Plot and widget builders used by the chapters.

Each builder returns a matplotlib figure, an ipywidgets widget, or a kernel-free HTML sweep
(`matplotlib.animation.FuncAnimation.to_jshtml`), so the same picture works in Jupyter, in Colab
and on the static site. Import the submodule you need, e.g. ``from camegrad_mini.viz import pareto``.
"""
