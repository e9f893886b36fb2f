"""The web demo's parts that are not the page itself (app.py lays out and serves the page)."""
