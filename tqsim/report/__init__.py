"""Plots and exporters (HTML/Markdown/JSON) fed from one report object."""
