"""The HTML report (Jinja2 templates in templates/) and the MultiQC custom content."""
