"""`larp app`: a local web page to see the tokenizer and the generator at work.

`core` does the work (reconstruct, generate, continue) with no web framework; `page` lays it out as a
Gradio page; `commands` registers the command. Nothing here imports Gradio or torch at import time, so that
the command line starts fast and works without the `app` extra installed."""
