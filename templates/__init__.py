"""Jinja2 templates and CSS for the HTML report (package data, loaded by matrix.report.render)."""
