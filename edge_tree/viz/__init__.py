"""The viewer: step records (edge_tree.records) shown without a model.

jsonl (trace.jsonl out and in; the writer hands each record to sinks), graph (Graphviz pictures
and their sink), terminal (the text tree), report (report.html from a Jinja2 template and static
files), charts (the report's bar charts), outputs (the sinks a trace directory uses; re-rendering a
trace), text (token text made visible, numbers).
"""
