"""The Gradio demo around `wmoe`, by feature: one module per tab (analyze, compare, batch) over the models
loaded once (models), the input guards (guards), zip unpacking (archives) and the result files (results).
`app.py` only composes the page and serves it."""
