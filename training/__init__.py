"""Training and evaluation of WMoE-CLIP, and the data tools they use (run as `python -m training.<command>`)."""
